{{/* Labels on every object: the component's name (also the selector) and the suite's. */}}
{{- define "podid.labels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/part-of: podid
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{- end -}}

{{/* Whether podid-operator runs: standard mode, or the bridge in managed mode. */}}
{{- define "podid.operator" -}}
{{- if .Values.mic.enabled -}}
true
{{- end -}}
{{- end -}}

{{/* The original MIC's lock podid-operator respects: "<namespace>/<name>". */}}
{{- define "podid.originalLock" -}}
{{- printf "%s/%s" (default "default" .Values.mic.leaderElection.namespace) (default "aad-pod-identity-mic" .Values.mic.leaderElection.name) -}}
{{- end -}}

{{/* An image reference: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "podid.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* Checks of values that would otherwise render a broken install. */}}
{{- define "podid.validate" -}}
{{- if not (has .Values.operationMode (list "standard" "managed")) -}}
{{- fail (printf "operationMode %q: standard or managed" .Values.operationMode) -}}
{{- end -}}
{{- if not (has .Values.images.nmi.iptables (list "nft" "legacy")) -}}
{{- fail (printf "images.nmi.iptables %q: nft or legacy" .Values.images.nmi.iptables) -}}
{{- end -}}
{{- if not (has .Values.federated.identityServing (list "assigned" "federated" "federated-with-fallback")) -}}
{{- fail (printf "federated.identityServing %q: assigned, federated or federated-with-fallback" .Values.federated.identityServing) -}}
{{- end -}}
{{- if and (ne .Values.federated.identityServing "assigned") (not .Values.federated.enabled) -}}
{{- fail "federated.identityServing other than assigned needs federated.enabled" -}}
{{- end -}}
{{- if and .Values.federated.enabled (not .Values.rbac.enabled) -}}
{{- fail "federated.enabled needs rbac.enabled: the agent's TokenRequest power is granted only together with the admission policy that confines it" -}}
{{- end -}}
{{- if not (has .Values.netRawPolicy.action (list "Deny" "Warn" "Audit")) -}}
{{- fail (printf "netRawPolicy.action %q: Deny, Warn or Audit" .Values.netRawPolicy.action) -}}
{{- end -}}
{{- end -}}

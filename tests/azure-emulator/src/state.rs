//! The emulated Azure world: apps, user-assigned identities with federated credentials, scale
//! sets and VMs with their identity blocks, pending operations, faults and call counters.
//! Plain data and the rules ARM applies to it; HTTP lives elsewhere.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Lower-cased ARM id: ARM compares ids case-insensitively.
pub fn key(id: &str) -> String {
    id.trim_end_matches('/').to_ascii_lowercase()
}

/// An Entra application / service principal (client-credentials caller).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct App {
    pub client_id: String,
    #[serde(default)]
    pub object_id: String,
    #[serde(default)]
    pub tenant_id: String,
    /// Client secret, if the app has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// PEM public key (or certificate) the app's certificate assertions are verified with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_pem: Option<String>,
}

/// A federated identity credential.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fic {
    pub name: String,
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
    /// Until when Entra does not see the credential yet (a new one takes a while to
    /// propagate; see `Emulator::set_fic_propagation`).
    #[serde(skip)]
    pub visible_from: Option<std::time::Instant>,
}

/// A user-assigned managed identity.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub id: String,
    pub name: String,
    pub location: String,
    pub client_id: String,
    pub principal_id: String,
    pub tenant_id: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub federated_credentials: BTreeMap<String, Fic>,
}

impl Identity {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "name": self.name, "location": self.location, "tags": self.tags,
            "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
            "properties": {"clientId": self.client_id, "principalId": self.principal_id, "tenantId": self.tenant_id}
        })
    }
}

impl Fic {
    pub fn to_json(&self, identity_id: &str) -> Value {
        json!({
            "id": format!("{identity_id}/federatedIdentityCredentials/{}", self.name),
            "name": self.name,
            "type": "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials",
            "properties": {"issuer": self.issuer, "subject": self.subject, "audiences": self.audiences}
        })
    }
}

/// The `identity` block of a scale set or VM.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IdentityBlock {
    pub system_assigned: bool,
    /// Lower-cased id → the id as the caller spelled it, and whether ARM finished assigning it.
    pub user_assigned: BTreeMap<String, (String, bool)>,
}

/// The ARM error of a rejected identity change.
#[derive(Clone, Debug, PartialEq)]
pub struct ArmError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ArmError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }
}

/// At most this many user-assigned identities may be named in one request.
pub const MAX_IDENTITIES_PER_REQUEST: usize = 150;

impl IdentityBlock {
    pub fn type_str(&self) -> &'static str {
        match (self.system_assigned, !self.user_assigned.is_empty()) {
            (true, true) => "SystemAssigned, UserAssigned",
            (true, false) => "SystemAssigned",
            (false, true) => "UserAssigned",
            (false, false) => "None",
        }
    }

    /// Applies an `identity` object of a PATCH (merge) or PUT (replace) request.
    pub fn apply(
        &mut self,
        body: &Value,
        replace: bool,
        identities: &HashMap<String, Identity>,
    ) -> Result<(), ArmError> {
        let ty = body
            .get("type")
            .and_then(Value::as_str)
            .map(|t| t.replace(' ', "").to_ascii_lowercase());
        let entries = body
            .get("userAssignedIdentities")
            .and_then(Value::as_object);
        if let Some(e) = entries
            && e.len() > MAX_IDENTITIES_PER_REQUEST
        {
            return Err(ArmError::new(
                400,
                "FailedIdentityOperation",
                format!(
                    "Identity operation for resource failed with error 'Failed to perform resource identity operation. Status: 'BadRequest'. Response: '{{\"error\":{{\"code\":\"BadRequest\",\"message\":\"User Assigned Identities Number '{}' Assign exceed limit '{MAX_IDENTITIES_PER_REQUEST}' in one request.\"}}}}'.'.",
                    e.len()
                ),
            ));
        }
        let (system, user) = match ty.as_deref() {
            None => (self.system_assigned, true),
            Some("none") => (false, false),
            Some("systemassigned") => (true, false),
            Some("userassigned") => (false, true),
            Some("systemassigned,userassigned") => (true, true),
            Some(other) => {
                return Err(ArmError::new(
                    400,
                    "InvalidParameter",
                    format!("The value '{other}' of parameter 'identity.type' is not valid."),
                ));
            }
        };
        if !user && entries.is_some_and(|e| e.values().any(|v| !v.is_null())) {
            return Err(ArmError::new(
                400,
                "InvalidParameter",
                format!(
                    "ResourceIdentity identityIds should not be provided if the type is \"{}\".",
                    if system { "SystemAssigned" } else { "None" }
                ),
            ));
        }
        let mut next = if replace || !user {
            BTreeMap::new()
        } else {
            self.user_assigned.clone()
        };
        for (id, v) in entries.into_iter().flatten() {
            let k = key(id);
            if v.is_null() {
                next.remove(&k);
                continue;
            }
            if !identities.contains_key(&k) {
                return Err(ArmError::new(
                    400,
                    "FailedIdentityOperation",
                    format!(
                        "Identity operation for resource failed with error 'Failed to perform resource identity operation. Status: 'NotFound'. Response: '{{\"error\":{{\"code\":\"NotFound\",\"message\":\"Resource '{id}' was not found.\"}}}}'.'."
                    ),
                ));
            }
            next.entry(k).or_insert_with(|| (id.clone(), false));
        }
        if user && next.is_empty() && ty.is_some() {
            // The last user-assigned identity goes by changing `type`, never by naming none.
            return Err(ArmError::new(
                400,
                "InvalidParameter",
                "The identity type includes 'UserAssigned' but no user assigned identities would remain; change the type to remove the last one.",
            ));
        }
        self.system_assigned = system;
        self.user_assigned = next;
        Ok(())
    }

    /// Marks every entry assigned (the long-running operation finished).
    pub fn complete(&mut self) {
        for v in self.user_assigned.values_mut() {
            v.1 = true;
        }
    }

    pub fn to_json(
        &self,
        principal_id: &str,
        tenant_id: &str,
        identities: &HashMap<String, Identity>,
    ) -> Value {
        let mut out = json!({"type": self.type_str()});
        if self.system_assigned {
            out["principalId"] = json!(principal_id);
            out["tenantId"] = json!(tenant_id);
        }
        if !self.user_assigned.is_empty() {
            let map: serde_json::Map<String, Value> = self
                .user_assigned
                .iter()
                .map(|(k, (spelled, done))| {
                    let v = match identities.get(k) {
                        Some(i) if *done => {
                            json!({"principalId": i.principal_id, "clientId": i.client_id})
                        }
                        _ => json!({}),
                    };
                    (spelled.clone(), v)
                })
                .collect();
            out["userAssignedIdentities"] = Value::Object(map);
        }
        out
    }
}

/// A scale set or a standalone VM.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    pub id: String,
    pub name: String,
    pub location: String,
    pub is_scale_set: bool,
    /// Instance ids (scale sets only).
    #[serde(default)]
    pub instances: Vec<String>,
    pub principal_id: String,
    pub tenant_id: String,
    #[serde(skip)]
    pub identity: IdentityBlock,
    pub etag: u64,
    /// Properties kept from PUT/PATCH bodies (everything but `identity`).
    #[serde(default)]
    pub extra: Value,
}

impl Machine {
    pub fn to_json(&self, identities: &HashMap<String, Identity>, provisioning: &str) -> Value {
        let (ty, mut props) = if self.is_scale_set {
            (
                "Microsoft.Compute/virtualMachineScaleSets",
                json!({"upgradePolicy": {"mode": "Manual"}, "singlePlacementGroup": false}),
            )
        } else {
            (
                "Microsoft.Compute/virtualMachines",
                json!({"vmId": self.principal_id}),
            )
        };
        if let Some(extra) = self.extra.get("properties").and_then(Value::as_object) {
            for (k, v) in extra {
                props[k] = v.clone();
            }
        }
        props["provisioningState"] = json!(provisioning);
        props["uniqueId"] = json!(self.principal_id);
        let mut out = json!({
            "id": self.id, "name": self.name, "type": ty, "location": self.location,
            "etag": format!("\"{}\"", self.etag),
            "properties": props,
            "identity": self.identity.to_json(&self.principal_id, &self.tenant_id, identities),
        });
        if self.is_scale_set {
            out["sku"] = self
                .extra
                .get("sku")
                .cloned()
                .unwrap_or_else(|| json!({"name": "Standard_DS2_v2", "tier": "Standard", "capacity": self.instances.len()}));
        }
        if let Some(tags) = self.extra.get("tags") {
            out["tags"] = tags.clone();
        }
        out
    }
}

/// Checks a federated credential's name and body as Microsoft.ManagedIdentity does.
pub fn validate_fic(name: &str, body: &Value) -> Result<Fic, ArmError> {
    let name_ok = (3..=120).contains(&name.len())
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok {
        return Err(ArmError::new(
            400,
            "BadRequest",
            format!("Federated Identity Credential name '{name}' is invalid."),
        ));
    }
    let Some(props) = body
        .get("properties")
        .filter(|p| p.as_object().is_some_and(|o| !o.is_empty()))
    else {
        return Err(ArmError::new(
            400,
            "BadRequest",
            "Federated Identity Credential from HTTP body has empty properties",
        ));
    };
    let s = |k: &str| props.get(k).and_then(Value::as_str).map(str::to_string);
    let audiences: Option<Vec<String>> =
        props.get("audiences").and_then(Value::as_array).map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        });
    let (Some(issuer), Some(subject), Some(audiences)) = (s("issuer"), s("subject"), audiences)
    else {
        return Err(ArmError::new(
            400,
            "BadRequest",
            "The request format was unexpected. Federated Identity Credential must specify 'issuer', 'subject' and 'audience'.",
        ));
    };
    if audiences.len() != 1 {
        return Err(ArmError::new(
            400,
            "BadRequest",
            "Federated identity credentials must have exactly one audience.",
        ));
    }
    for (field, v) in [
        ("issuer", &issuer),
        ("subject", &subject),
        ("audience", &audiences[0]),
    ] {
        if v.len() > 600 || v.is_empty() {
            return Err(ArmError::new(
                400,
                "BadRequest",
                format!("Federated Identity Credential {field} must be 1 to 600 characters."),
            ));
        }
    }
    if !issuer.starts_with("https://") {
        return Err(ArmError::new(
            400,
            "BadRequest",
            "Federated Identity Credential issuer must be an https URL.",
        ));
    }
    Ok(Fic {
        name: name.into(),
        issuer,
        subject,
        audiences,
        visible_from: None,
    })
}

/// At most this many federated credentials per identity.
pub const MAX_FICS: usize = 20;

/// Adds or replaces a federated credential on an identity.
pub fn put_fic(identity: &mut Identity, fic: Fic) -> Result<bool, ArmError> {
    let clash = identity
        .federated_credentials
        .values()
        .any(|f| f.name != fic.name && f.issuer == fic.issuer && f.subject == fic.subject);
    if clash {
        return Err(ArmError::new(
            400,
            "BadRequest",
            "Issuer and subject combination already exists for this Managed Identity.",
        ));
    }
    let created = !identity.federated_credentials.contains_key(&fic.name);
    if created && identity.federated_credentials.len() >= MAX_FICS {
        return Err(ArmError::new(
            400,
            "BadRequest",
            format!(
                "Too many Federated Identity Credentials for the managed identity '{}'. The maximum is {MAX_FICS}.",
                key(&identity.id)
            ),
        ));
    }
    identity.federated_credentials.insert(fic.name.clone(), fic);
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> HashMap<String, Identity> {
        names
            .iter()
            .map(|n| {
                let id = format!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{n}");
                (key(&id), Identity { id: id.clone(), name: n.to_string(), location: "eastus".into(), client_id: format!("c-{n}"), principal_id: format!("p-{n}"), tenant_id: "t".into(), tags: Default::default(), federated_credentials: Default::default() })
            })
            .collect()
    }
    fn id(n: &str) -> String {
        format!(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{n}"
        )
    }

    #[test]
    fn patch_merges_keeps_unmentioned_and_null_removes() {
        let known = ids(&["a", "b", "c"]);
        let mut b = IdentityBlock::default();
        b.apply(
            &json!({"type": "UserAssigned", "userAssignedIdentities": {id("a"): {}, id("b"): {}}}),
            false,
            &known,
        )
        .unwrap();
        b.apply(&json!({"type": "UserAssigned", "userAssignedIdentities": {id("c").to_uppercase(): {}}}), false, &known).unwrap();
        assert_eq!(b.user_assigned.len(), 3);
        b.apply(
            &json!({"type": "UserAssigned", "userAssignedIdentities": {id("a"): null}}),
            false,
            &known,
        )
        .unwrap();
        assert_eq!(b.user_assigned.len(), 2);
        assert!(!b.user_assigned.contains_key(&key(&id("a"))));
    }

    #[test]
    fn last_identity_goes_by_changing_type() {
        let known = ids(&["a"]);
        let mut b = IdentityBlock {
            system_assigned: true,
            ..Default::default()
        };
        b.apply(&json!({"type": "SystemAssigned,UserAssigned", "userAssignedIdentities": {id("a"): {}}}), false, &known).unwrap();
        assert_eq!(b.type_str(), "SystemAssigned, UserAssigned");
        b.apply(&json!({"type": "SystemAssigned"}), false, &known)
            .unwrap();
        assert_eq!(b.type_str(), "SystemAssigned");
        assert!(b.user_assigned.is_empty());
        let err = b
            .apply(
                &json!({"type": "SystemAssigned", "userAssignedIdentities": {id("a"): {}}}),
                true,
                &known,
            )
            .unwrap_err();
        assert_eq!(err.code, "InvalidParameter");
    }

    #[test]
    fn more_than_150_in_one_request_fails() {
        let names: Vec<String> = (0..151).map(|i| format!("i{i}")).collect();
        let known = ids(&names.iter().map(String::as_str).collect::<Vec<_>>());
        let body: serde_json::Map<String, Value> =
            names.iter().map(|n| (id(n), json!({}))).collect();
        let err = IdentityBlock::default()
            .apply(
                &json!({"type": "UserAssigned", "userAssignedIdentities": body}),
                false,
                &known,
            )
            .unwrap_err();
        assert_eq!(err.code, "FailedIdentityOperation");
        assert!(
            err.message.contains("'151' Assign exceed limit '150'"),
            "{}",
            err.message
        );
    }

    #[test]
    fn unknown_identity_fails() {
        let err = IdentityBlock::default()
            .apply(
                &json!({"type": "UserAssigned", "userAssignedIdentities": {id("ghost"): {}}}),
                false,
                &ids(&[]),
            )
            .unwrap_err();
        assert_eq!(err.code, "FailedIdentityOperation");
    }

    #[test]
    fn fic_rules() {
        assert_eq!(
            validate_fic("ab", &json!({})).unwrap_err().message,
            "Federated Identity Credential name 'ab' is invalid."
        );
        assert!(validate_fic("-abc", &json!({})).is_err());
        let two =
            json!({"properties": {"issuer": "https://i", "subject": "s", "audiences": ["a", "b"]}});
        assert_eq!(
            validate_fic("abc", &two).unwrap_err().message,
            "Federated identity credentials must have exactly one audience."
        );
        let mut ident = ids(&["x"]).into_values().next().unwrap();
        for i in 0..MAX_FICS {
            let f = validate_fic(&format!("fic-{i}"), &json!({"properties": {"issuer": "https://i", "subject": format!("s{i}"), "audiences": ["api://AzureADTokenExchange"]}})).unwrap();
            assert!(put_fic(&mut ident, f).unwrap());
        }
        let f = validate_fic("fic-x", &json!({"properties": {"issuer": "https://i", "subject": "s-new", "audiences": ["api://AzureADTokenExchange"]}})).unwrap();
        assert!(
            put_fic(&mut ident, f)
                .unwrap_err()
                .message
                .contains("maximum is 20")
        );
        let dup = validate_fic("fic-0", &json!({"properties": {"issuer": "https://i", "subject": "s1", "audiences": ["api://AzureADTokenExchange"]}})).unwrap();
        assert!(
            put_fic(&mut ident, dup)
                .unwrap_err()
                .message
                .contains("combination already exists")
        );
    }
}

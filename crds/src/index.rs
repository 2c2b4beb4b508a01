//! The identity objects of a cluster, owned and indexed for the questions podid asks of them:
//! bindings by selector, identities by namespace and name, exceptions by namespace.
//!
//! The index is fed by watch events ([`IndexObjects::apply`], [`IndexObjects::delete`],
//! [`IndexObjects::reset`] after a (re)list), so it is updated in place as the cluster changes and
//! is never rebuilt or copied to answer a question. Matching one pod costs O(the bindings whose
//! selector is the pod's label), whatever else the cluster holds. The node agent and the operator
//! feed it from their watches; the CLI fills it once from its inventory
//! ([`IdentityIndex::from_objects`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use kube::ResourceExt;

use crate::policy::{MatchOptions, PodFacts, PodIdentities, grants_from, is_pod_excepted};
use crate::types::{AzureIdentity, AzureIdentityBinding, AzurePodIdentityException};

/// Namespace and name of an object (cluster-scoped objects have an empty namespace). Orders as
/// the original orders bindings: by namespace, then name.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of a Kubernetes object.
    pub fn of<K: ResourceExt>(obj: &K) -> Self {
        Self::new(obj.namespace().unwrap_or_default(), obj.name_any())
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How an index takes one kind of object from a watch: an object added or changed, an object
/// deleted, or the full set after a (re)list.
pub trait IndexObjects<K> {
    fn apply(&mut self, obj: K);
    fn delete(&mut self, key: &ObjectKey);
    fn reset(&mut self, objs: Vec<K>);
}

/// Bindings, identities and exceptions, indexed. See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct IdentityIndex {
    bindings: HashMap<ObjectKey, Arc<AzureIdentityBinding>>,
    /// Binding keys by `spec.selector`, in the original's order.
    by_selector: HashMap<String, BTreeSet<ObjectKey>>,
    identities: HashMap<ObjectKey, Arc<AzureIdentity>>,
    /// Exceptions by namespace, then name.
    exceptions: HashMap<String, BTreeMap<String, Arc<AzurePodIdentityException>>>,
}

impl IdentityIndex {
    /// An index of these objects (each cloned once).
    pub fn from_objects<'a>(
        bindings: impl IntoIterator<Item = &'a AzureIdentityBinding>,
        identities: impl IntoIterator<Item = &'a AzureIdentity>,
        exceptions: impl IntoIterator<Item = &'a AzurePodIdentityException>,
    ) -> Self {
        let mut index = Self::default();
        for b in bindings {
            index.apply(b.clone());
        }
        for i in identities {
            index.apply(i.clone());
        }
        for e in exceptions {
            index.apply(e.clone());
        }
        index
    }

    /// The identities the pod may use, with the reason for every matching binding that grants
    /// none: the same answer as [`crate::policy::pod_identities`] over all objects.
    pub fn pod_identities(&self, pod: &PodFacts, opts: MatchOptions) -> PodIdentities<'_> {
        let matching: Vec<&AzureIdentityBinding> = pod
            .binding_label()
            .filter(|v| !v.is_empty())
            .and_then(|label| self.by_selector.get(label))
            .into_iter()
            .flatten()
            .filter(|k| !opts.pod_namespace_only || k.namespace == pod.namespace)
            .filter_map(|k| self.bindings.get(k).map(|b| &**b))
            .collect();
        grants_from(
            pod,
            matching,
            |b| {
                self.identities
                    .get(&ObjectKey::new(
                        b.namespace().unwrap_or_default(),
                        b.spec.azure_identity.clone(),
                    ))
                    .map(|i| &**i)
            },
            opts,
        )
    }

    /// The AzurePodIdentityExceptions in `namespace`.
    pub fn exceptions_in(
        &self,
        namespace: &str,
    ) -> impl Iterator<Item = &AzurePodIdentityException> {
        self.exceptions
            .get(namespace)
            .into_iter()
            .flat_map(|m| m.values().map(|e| &**e))
    }

    /// True when an exception in the pod's namespace matches it
    /// ([`crate::policy::is_pod_excepted`]).
    pub fn is_pod_excepted(&self, pod: &PodFacts) -> bool {
        is_pod_excepted(pod, self.exceptions_in(&pod.namespace))
    }

    pub fn identity(&self, key: &ObjectKey) -> Option<&AzureIdentity> {
        self.identities.get(key).map(|i| &**i)
    }

    pub fn binding(&self, key: &ObjectKey) -> Option<&AzureIdentityBinding> {
        self.bindings.get(key).map(|b| &**b)
    }

    /// Every identity, in no particular order.
    pub fn identities(&self) -> impl Iterator<Item = &AzureIdentity> {
        self.identities.values().map(|i| &**i)
    }

    /// Every binding, in no particular order.
    pub fn bindings(&self) -> impl Iterator<Item = &AzureIdentityBinding> {
        self.bindings.values().map(|b| &**b)
    }

    /// Every exception, in no particular order.
    pub fn exceptions(&self) -> impl Iterator<Item = &AzurePodIdentityException> {
        self.exceptions
            .values()
            .flat_map(|m| m.values().map(|e| &**e))
    }

    fn unlink_binding(&mut self, key: &ObjectKey) {
        let Some(old) = self.bindings.remove(key) else {
            return;
        };
        if let Some(keys) = self.by_selector.get_mut(&old.spec.selector) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_selector.remove(&old.spec.selector);
            }
        }
    }
}

impl IndexObjects<AzureIdentityBinding> for IdentityIndex {
    fn apply(&mut self, obj: AzureIdentityBinding) {
        let key = ObjectKey::of(&obj);
        // The selector may have changed: drop the old entry first.
        self.unlink_binding(&key);
        self.by_selector
            .entry(obj.spec.selector.clone())
            .or_default()
            .insert(key.clone());
        self.bindings.insert(key, Arc::new(obj));
    }

    fn delete(&mut self, key: &ObjectKey) {
        self.unlink_binding(key);
    }

    fn reset(&mut self, objs: Vec<AzureIdentityBinding>) {
        self.bindings.clear();
        self.by_selector.clear();
        for o in objs {
            self.apply(o);
        }
    }
}

impl IndexObjects<AzureIdentity> for IdentityIndex {
    fn apply(&mut self, obj: AzureIdentity) {
        self.identities.insert(ObjectKey::of(&obj), Arc::new(obj));
    }

    fn delete(&mut self, key: &ObjectKey) {
        self.identities.remove(key);
    }

    fn reset(&mut self, objs: Vec<AzureIdentity>) {
        self.identities = objs
            .into_iter()
            .map(|o| (ObjectKey::of(&o), Arc::new(o)))
            .collect();
    }
}

impl IndexObjects<AzurePodIdentityException> for IdentityIndex {
    fn apply(&mut self, obj: AzurePodIdentityException) {
        let key = ObjectKey::of(&obj);
        self.exceptions
            .entry(key.namespace)
            .or_default()
            .insert(key.name, Arc::new(obj));
    }

    fn delete(&mut self, key: &ObjectKey) {
        if let Some(m) = self.exceptions.get_mut(&key.namespace) {
            m.remove(&key.name);
            if m.is_empty() {
                self.exceptions.remove(&key.namespace);
            }
        }
    }

    fn reset(&mut self, objs: Vec<AzurePodIdentityException>) {
        self.exceptions.clear();
        for o in objs {
            self.apply(o);
        }
    }
}

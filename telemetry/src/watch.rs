//! Watches that keep a service's view of the cluster current: into a `kube` reflector store, or
//! into a podid index ([`podid_crds::index::IndexObjects`]) updated in place. Each runs until
//! the shutdown token fires, retries with kube's default backoff, and logs its errors.

use std::sync::{Arc, RwLock};

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use podid_crds::index::{IndexObjects, ObjectKey};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What a watched kind must be.
pub trait Watched:
    Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static
{
}
impl<K> Watched for K where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static
{
}

/// Starts a watch into a reflector store; every event wakes `notify` when given. `what` names
/// the watch in logs. Objects are stored without `metadata.managedFields`, which no podid
/// service reads and which is often the largest part of an object.
pub fn store<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    notify: Option<Arc<Notify>>,
    shutdown: CancellationToken,
) -> Store<K>
where
    K: Watched,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    store_trimmed(api, config, what, notify, shutdown, |_| {})
}

/// [`store`], with `trim` applied to every object before it is stored: a service keeps only
/// the fields it reads (a cluster's pods are most of a controller's memory otherwise).
pub fn store_trimmed<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    notify: Option<Arc<Notify>>,
    shutdown: CancellationToken,
    mut trim: impl FnMut(&mut K) + Send + 'static,
) -> Store<K>
where
    K: Watched,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(move |obj| {
            obj.meta_mut().managed_fields = None;
            trim(obj);
        })
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = stream.next() => match ev {
                    Some(Ok(_)) => {
                        if let Some(n) = &notify {
                            n.notify_one();
                        }
                    }
                    Some(Err(e)) => tracing::warn!(watch = what, error = %e, "watch error; retrying"),
                    None => break,
                }
            }
        }
    });
    reader
}

/// Resolves once a watch has listed at least once.
#[derive(Clone, Debug)]
pub struct Synced(tokio::sync::watch::Receiver<bool>);

impl Synced {
    /// Waits for the first complete list; returns false if the watch ended before it.
    pub async fn wait(&self) -> bool {
        let mut rx = self.0.clone();
        rx.wait_for(|synced| *synced).await.is_ok()
    }

    /// True once the first list is complete.
    pub fn is_synced(&self) -> bool {
        *self.0.borrow()
    }
}

/// Starts a watch that updates `index` in place: an object added, changed or deleted is applied
/// as it arrives; a (re)list replaces this kind's objects once the list is complete, so the
/// index never answers from half a list. Every change wakes `notify` when given.
pub fn index<K, I>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    index: Arc<RwLock<I>>,
    notify: Option<Arc<Notify>>,
    shutdown: CancellationToken,
) -> Synced
where
    K: Watched,
    I: IndexObjects<K> + Send + Sync + 'static,
{
    let (tx, rx) = tokio::sync::watch::channel(false);
    // As in [`store`]: nothing reads managedFields.
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|obj| obj.meta_mut().managed_fields = None);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut relist: Option<Vec<K>> = None;
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => ev,
                    Some(Err(e)) => {
                        tracing::warn!(watch = what, error = %e, "watch error; retrying");
                        continue;
                    }
                    None => break,
                }
            };
            let changed = {
                let write = || index.write().expect("index lock");
                match event {
                    watcher::Event::Init => {
                        relist = Some(Vec::new());
                        false
                    }
                    watcher::Event::InitApply(o) => {
                        relist.get_or_insert_with(Vec::new).push(o);
                        false
                    }
                    watcher::Event::InitDone => {
                        write().reset(relist.take().unwrap_or_default());
                        tx.send_replace(true);
                        true
                    }
                    watcher::Event::Apply(o) => {
                        write().apply(o);
                        true
                    }
                    watcher::Event::Delete(o) => {
                        write().delete(&ObjectKey::of(&o));
                        true
                    }
                }
            };
            if changed && let Some(n) = &notify {
                n.notify_one();
            }
        }
    });
    Synced(rx)
}

//! Network namespaces a test creates (never the host's own tables): a "node" namespace for the
//! agent's iptables rules and the agent, and "pod" namespaces behind veth pairs whose default
//! route is the node.

use std::net::Ipv4Addr;

use podid_nmi::iptables::{Iptables, RuleSpec};

use super::{Netns, sh};

/// A "node" namespace and `pods` "pod" namespaces, each joined to the node by its own veth pair
/// (pod `i` is 10.200.`i`.2, the node 10.200.`i`.1 on that link), deleted on drop.
pub struct NodeNetns {
    pub node: String,
    pub pods: Vec<String>,
    _guard: Netns,
}

/// The agent's rules with its defaults: chain `podid-metadata`, 169.254.169.254:80 to
/// 127.0.0.1:2579.
pub fn agent_rules() -> RuleSpec {
    RuleSpec {
        chain: podid_nmi::iptables::DEFAULT_CHAIN.into(),
        metadata_ip: "169.254.169.254".parse().unwrap(),
        metadata_port: 80,
        target_ip: "127.0.0.1".parse().unwrap(),
        target_port: 2579,
    }
}

impl NodeNetns {
    /// `None` (with the reason, through `podid_testkit::prereq`) where `ip netns add` is not
    /// permitted. `tag` (a letter or two) keeps concurrent tests' names apart.
    pub fn create(test: &str, tag: &str, pods: usize) -> Option<Self> {
        assert!(pods <= 9, "at most 9 pods");
        if !podid_testkit::prereq::netns_available(test) {
            return None;
        }
        let id = std::process::id();
        let node = format!("podid-nmi-{id}-{tag}-node");
        sh(&["ip", "netns", "add", &node]);
        let mut guard = Netns(vec![node.clone()]);
        let mut names = Vec::new();
        for i in 0..pods {
            let pod = format!("podid-nmi-{id}-{tag}-pod{i}");
            sh(&["ip", "netns", "add", &pod]);
            guard.0.push(pod.clone());
            let (vn, vp) = (format!("pn{id}{tag}{i}"), format!("pp{id}{tag}{i}"));
            assert!(
                vn.len() <= 15,
                "interface name {vn} too long: use a shorter tag"
            );
            sh(&[
                "ip", "link", "add", &vn, "type", "veth", "peer", "name", &vp,
            ]);
            sh(&["ip", "link", "set", &vn, "netns", &node]);
            sh(&["ip", "link", "set", &vp, "netns", &pod]);
            for (ns, dev, addr) in [
                (&node, &vn, format!("10.200.{i}.1/24")),
                (&pod, &vp, format!("{}/24", Self::pod_ip(i))),
            ] {
                sh(&[
                    "ip", "netns", "exec", ns, "ip", "addr", "add", &addr, "dev", dev,
                ]);
                sh(&["ip", "netns", "exec", ns, "ip", "link", "set", dev, "up"]);
                sh(&["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
            }
            sh(&[
                "ip",
                "netns",
                "exec",
                &pod,
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("10.200.{i}.1"),
            ]);
            // DNAT to 127.0.0.1 from PREROUTING needs route_localnet (kube-proxy sets it on
            // real nodes).
            for conf in ["all", vn.as_str()] {
                sh(&[
                    "ip",
                    "netns",
                    "exec",
                    &node,
                    "sysctl",
                    "-qw",
                    &format!("net.ipv4.conf.{conf}.route_localnet=1"),
                ]);
            }
            names.push(pod);
        }
        Some(Self {
            node,
            pods: names,
            _guard: guard,
        })
    }

    /// The address of pod `i`.
    pub fn pod_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, i as u8, 2)
    }

    /// iptables inside the node namespace.
    pub fn iptables(&self) -> Iptables {
        Iptables {
            prefix: vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                self.node.clone(),
            ],
        }
    }

    /// `iptables -t nat -S` in the node namespace.
    pub fn nat_listing(&self) -> String {
        String::from_utf8(
            sh(&[
                "ip", "netns", "exec", &self.node, "iptables", "-w", "-t", "nat", "-S",
            ])
            .stdout,
        )
        .unwrap()
    }

    /// A TCP listener on `addr` in the node namespace (e.g. the agent's `127.0.0.1:2579`).
    pub fn listen_on_node(&self, addr: &str) -> tokio::net::TcpListener {
        tokio::net::TcpListener::from_std(super::listen_in_netns(&self.node, addr)).unwrap()
    }

    /// Runs `f` on a thread of its own inside pod `i`'s namespace (every socket it opens is the
    /// pod's), with a current-thread runtime; returns what it returns.
    pub async fn in_pod<T, F, Fut>(&self, i: usize, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
    {
        let path = format!("/var/run/netns/{}", self.pods[i]);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on a valid namespace fd changes only this thread, which ends here.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = tx.send(rt.block_on(f()));
        });
        rx.await
            .expect("the pod's thread panicked; see its message above")
    }
}

impl NodeNetns {
    /// Pod `i` asks `http://169.254.169.254<path>` (header `Metadata: true`, one connection,
    /// 10 s at most): the status line and body, or the connection's error (a refused connection
    /// is `ErrorKind::ConnectionRefused`).
    pub async fn pod_asks_metadata(&self, i: usize, path: &str) -> std::io::Result<String> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nConnection: close\r\n\r\n"
        );
        self.in_pod(i, move || async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let exchange = async {
                let mut s = tokio::net::TcpStream::connect("169.254.169.254:80").await?;
                s.write_all(request.as_bytes()).await?;
                let mut out = Vec::new();
                s.read_to_end(&mut out).await?;
                let text = String::from_utf8_lossy(&out).into_owned();
                let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
                Ok(format!(
                    "{} {body}",
                    head.lines().next().unwrap_or_default()
                ))
            };
            tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        })
        .await
    }
}

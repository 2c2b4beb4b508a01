//! The NAT rules that send pods' IMDS traffic to the agent: a chain in table `nat` (podid's own,
//! [`DEFAULT_CHAIN`], unless `--iptables-chain` names another), jumped to from `PREROUTING`, with
//! the original's rules in it. Its own chain lets the agent run beside the original NMI (whose
//! chain is [`ORIGINAL_CHAIN`]) with neither touching the other's rules: the swap with no
//! fail-open window in docs/security.md. Rendering is pure (an `iptables-restore` payload);
//! applying shells out to `iptables`/`iptables-restore`, optionally through a command prefix
//! such as `ip netns exec <ns>`.

use std::net::Ipv4Addr;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// podid-nmi's chain unless `--iptables-chain` says otherwise.
pub const DEFAULT_CHAIN: &str = "podid-metadata";
/// The original NMI's chain (hard-coded there), which it removes when it stops.
pub const ORIGINAL_CHAIN: &str = "aad-metadata";

/// Checks a chain name for `--iptables-chain`: 1 to 28 characters (iptables' limit) of
/// `A-Z a-z 0-9 - _ .`, not starting with `-`, and not a built-in chain's name.
pub fn check_chain_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > 28 || !ok_chars || name.starts_with('-') {
        return Err(format!(
            "--iptables-chain {name:?}: 1 to 28 characters of A-Z a-z 0-9 - _ . not starting with -"
        ));
    }
    if ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"].contains(&name) {
        return Err(format!("--iptables-chain {name:?} is a built-in chain"));
    }
    Ok(())
}

/// What the rules redirect, and where to, in which chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    /// The chain (`--iptables-chain`).
    pub chain: String,
    pub metadata_ip: Ipv4Addr,
    pub metadata_port: u16,
    /// `--nmi-listen-address`; `0.0.0.0` redirects to `127.0.0.1`.
    pub target_ip: Ipv4Addr,
    pub target_port: u16,
}

impl RuleSpec {
    fn target(&self) -> Ipv4Addr {
        if self.target_ip.is_unspecified() {
            Ipv4Addr::LOCALHOST
        } else {
            self.target_ip
        }
    }

    /// The chain's rules exactly as `iptables -t nat -S <chain>` lists them.
    pub fn expected_listing(&self) -> Vec<String> {
        let chain = &self.chain;
        vec![
            format!("-N {chain}"),
            self.dnat_rule(),
            format!("-A {chain} -j RETURN"),
        ]
    }

    /// The rule in `PREROUTING` that leads to the chain, as `iptables -t nat -S` lists it.
    pub fn jump_rule(&self) -> String {
        format!("-A PREROUTING -j {}", self.chain)
    }

    fn dnat_rule(&self) -> String {
        format!(
            "-A {} ! -s 127.0.0.1/32 -d {}/32 -p tcp -m tcp --dport {} -j DNAT --to-destination {}:{}",
            self.chain,
            self.metadata_ip,
            self.metadata_port,
            self.target(),
            self.target_port
        )
    }
}

/// The `iptables-restore --noflush` payload that (re)writes the chain. Declaring the chain
/// flushes it; the `PREROUTING` jump is inserted at position 1 only when `jump_present` is
/// false, so an existing jump is never duplicated or moved (as in the original). Inserted at
/// position 1, a new jump comes before every other, the original NMI's included: a pod's
/// connection is led to this agent from then on (DNAT ends the traversal of `nat`), and the
/// original removing its own jump and chain later changes nothing for it.
pub fn render_restore(spec: &RuleSpec, jump_present: bool) -> String {
    let chain = &spec.chain;
    let mut out = format!("*nat\n:{chain} - [0:0]\n");
    if !jump_present {
        out.push_str(&format!("-I PREROUTING 1 -j {chain}\n"));
    }
    out.push_str(&spec.dnat_rule());
    out.push('\n');
    out.push_str(&format!("-A {chain} -j RETURN\nCOMMIT\n"));
    out
}

/// The payload that removes `jumps` PREROUTING jumps to `chain`, then the chain. No other
/// chain or jump is touched.
pub fn render_cleanup(chain: &str, jumps: usize) -> String {
    let mut out = format!("*nat\n:{chain} - [0:0]\n");
    for _ in 0..jumps {
        out.push_str(&format!("-D PREROUTING -j {chain}\n"));
    }
    out.push_str(&format!("-X {chain}\nCOMMIT\n"));
    out
}

/// True when `listing` (of `iptables -t nat -S <chain>`) is exactly the expected chain.
pub fn chain_is_current(spec: &RuleSpec, listing: &str) -> bool {
    let lines: Vec<&str> = listing
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines == spec.expected_listing()
}

/// How many `-A PREROUTING -j <chain>` rules `iptables -t nat -S PREROUTING` lists.
pub fn count_jumps(chain: &str, prerouting_listing: &str) -> usize {
    let jump = format!("-A PREROUTING -j {chain}");
    prerouting_listing
        .lines()
        .filter(|l| l.trim() == jump)
        .count()
}

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("running {cmd}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Runs the iptables tools, optionally through a prefix (e.g. `["ip","netns","exec","t1"]`).
#[derive(Clone, Debug, Default)]
pub struct Iptables {
    pub prefix: Vec<String>,
}

impl Iptables {
    fn command(&self, program: &str, args: &[&str]) -> (Command, String) {
        let mut argv: Vec<String> = self.prefix.clone();
        argv.push(program.to_owned());
        argv.extend(args.iter().map(|s| (*s).to_owned()));
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]).kill_on_drop(true);
        (c, argv.join(" "))
    }

    async fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, IptablesError> {
        let (mut c, cmd) = self.command(program, args);
        c.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().map_err(|source| IptablesError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
        if let (Some(mut pipe), Some(input)) = (child.stdin.take(), stdin) {
            pipe.write_all(input.as_bytes())
                .await
                .map_err(|source| IptablesError::Spawn {
                    cmd: cmd.clone(),
                    source,
                })?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|source| IptablesError::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(IptablesError::Failed {
                cmd,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn jumps(&self, chain: &str) -> Result<usize, IptablesError> {
        Ok(count_jumps(
            chain,
            &self
                .run("iptables", &["-w", "-t", "nat", "-S", "PREROUTING"], None)
                .await?,
        ))
    }

    /// Makes the rules current; returns true when anything was written.
    pub async fn ensure(&self, spec: &RuleSpec) -> Result<bool, IptablesError> {
        let jumps = self.jumps(&spec.chain).await?;
        let current = match self
            .run("iptables", &["-w", "-t", "nat", "-S", &spec.chain], None)
            .await
        {
            Ok(listing) => chain_is_current(spec, &listing),
            Err(IptablesError::Failed { .. }) => false, // the chain does not exist yet
            Err(e) => return Err(e),
        };
        if current && jumps > 0 {
            return Ok(false);
        }
        self.run(
            "iptables-restore",
            &["-w", "--noflush"],
            Some(&render_restore(spec, jumps > 0)),
        )
        .await?;
        Ok(true)
    }

    /// Removes the jump(s) to `chain` and the chain; does nothing if they are gone.
    pub async fn cleanup(&self, chain: &str) -> Result<(), IptablesError> {
        let jumps = self.jumps(chain).await?;
        let exists = self
            .run("iptables", &["-w", "-t", "nat", "-S", chain], None)
            .await
            .is_ok();
        if jumps == 0 && !exists {
            return Ok(());
        }
        self.run(
            "iptables-restore",
            &["-w", "--noflush"],
            Some(&render_cleanup(chain, jumps)),
        )
        .await?;
        Ok(())
    }
}

/// `conntrack` arguments that delete the tracked TCP connections to IMDS (original destination
/// `ip:port`), as the original's `--enable-conntrack-deletion` does with netlink: connections a
/// pod opened before the rules existed otherwise keep bypassing the agent.
pub fn conntrack_delete_args(ip: Ipv4Addr, port: u16) -> Vec<String> {
    [
        "-D",
        "-p",
        "tcp",
        "--orig-dst",
        &ip.to_string(),
        "--orig-port-dst",
        &port.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The count in conntrack's summary line (`N flow entries have been deleted.`).
pub fn parse_conntrack_deleted(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|l| {
        let rest = l.split("): ").last()?;
        rest.strip_suffix(" flow entries have been deleted.")?
            .trim()
            .parse()
            .ok()
    })
}

impl Iptables {
    /// Deletes the tracked TCP connections to `ip:port` (with the `conntrack` tool); returns how
    /// many. None to delete is success (the tool itself exits 1 then).
    pub async fn delete_conntrack_entries(
        &self,
        ip: Ipv4Addr,
        port: u16,
    ) -> Result<u64, IptablesError> {
        let args = conntrack_delete_args(ip, port);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (mut c, cmd) = self.command("conntrack", &args);
        let out = c.output().await.map_err(|source| IptablesError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        match parse_conntrack_deleted(&stderr) {
            Some(n) => Ok(n),
            None => Err(IptablesError::Failed {
                cmd,
                status: out.status,
                stderr,
            }),
        }
    }
}

/// True when a kubelet configuration selects kubenet (the original refuses to run there).
pub fn is_kubenet(kubelet_config: &str) -> bool {
    kubelet_config.contains("--network-plugin=kubenet")
}

//! Fault: the agent dies or is restarted. Neither may open the node: the agent exits with its
//! iptables rules in place, so a pod's connection to the metadata address is refused (nothing
//! listens where the rules lead) instead of reaching IMDS — and every identity on the node —
//! for as long as the agent crash-loops or is being upgraded. Only SIGTERM/SIGINT with
//! `--remove-iptables-on-exit` (set to uninstall) removes them.
//!
//! The real `podid-nmi` binary runs in a "node" network namespace (`node::Node`).

use std::os::unix::process::ExitStatusExt;

use crate::live::netns::agent_rules;
use crate::node::{Node, tools};

/// `--enable-conntrack-deletion` on a node image without the `conntrack` tool: fatal right after
/// the first rules, at every start. The agent exits 1 and leaves the rules: the pod is refused,
/// never served by IMDS. The next start finds the rules, keeps a single jump and serves the
/// pod. SIGTERM (a restart, an upgrade) leaves them too: the pod is refused until the next agent
/// serves.
#[tokio::test]
async fn fatal_error_keeps_rules_and_refuses_pods() {
    let Some(node) = Node::start("security::fail_closed::fatal_error_keeps_rules", "fc").await
    else {
        return;
    };
    let rules = agent_rules();
    node.assert_pod_reaches_imds("before any agent").await;

    let no_conntrack = tools(&["iptables", "iptables-restore"]);
    let mut agent = node.agent(&["--enable-conntrack-deletion"], Some(no_conntrack.path()));
    let status = agent.exit_within(60).await;
    let log = agent.log();
    assert_eq!(
        status.code(),
        Some(1),
        "a fatal error exits 1: {status}\n{log}"
    );
    assert!(
        log.contains("deleting conntrack entries"),
        "the failure is the missing conntrack tool:\n{log}"
    );
    node.assert_rules_in_place(&rules, "after the fatal error");
    node.assert_pod_refused("after the fatal error").await;

    let mut agent = node.agent(&[], None);
    let answer = node.wait_until_the_agent_answers(&agent).await;
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    node.assert_rules_in_place(&rules, "after the next start");

    agent.signal(libc::SIGTERM);
    let status = agent.exit_within(30).await;
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM exits 0: {status}\n{}",
        agent.log()
    );
    assert!(
        agent.log().contains("leaving the iptables rules in place"),
        "{}",
        agent.log()
    );
    node.assert_rules_in_place(&rules, "after SIGTERM (a restart or an upgrade)");
    node.assert_pod_refused("after SIGTERM (a restart or an upgrade)")
        .await;
}

/// SIGKILL (an OOM kill, a crash) cannot remove the rules: the pod is refused. The next agent,
/// still starting (here: the API server unreachable, so it waits for its first list), leaves
/// them. Uninstalling: an agent given `PODID_NMI_REMOVE_IPTABLES_ON_EXIT=true` (the DaemonSet
/// rolled out with it) removes them on SIGTERM, even during start-up, and only its own.
#[tokio::test]
async fn killed_agent_keeps_rules_and_only_an_asked_stop_removes_them() {
    let Some(node) = Node::start("security::fail_closed::killed_agent_keeps_rules", "fk").await
    else {
        return;
    };
    let rules = agent_rules();
    let mut agent = node.agent(&[], None);
    node.wait_until_the_agent_answers(&agent).await;
    node.assert_rules_in_place(&rules, "while the agent runs");
    agent.signal(libc::SIGKILL);
    let status = agent.exit_within(30).await;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    node.assert_rules_in_place(&rules, "after SIGKILL");
    node.assert_pod_refused("after SIGKILL").await;

    // Another chain in PREROUTING (another component's): the cleanup leaves it.
    crate::live::sh(&[
        "ip",
        "netns",
        "exec",
        &node.net.node,
        "iptables",
        "-w",
        "-t",
        "nat",
        "-N",
        "other-chain",
    ]);
    crate::live::sh(&[
        "ip",
        "netns",
        "exec",
        &node.net.node,
        "iptables",
        "-w",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-j",
        "other-chain",
    ]);

    node.cut_apiserver();
    let mut agent =
        node.agent_with_env(&[], None, &[("PODID_NMI_REMOVE_IPTABLES_ON_EXIT", "true")]);
    agent.wait_for_log("podid-nmi starting").await;
    node.assert_pod_refused("while the next agent starts").await;
    node.assert_rules_in_place(&rules, "while the next agent starts");
    agent.signal(libc::SIGTERM);
    let status = agent.exit_within(30).await;
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM during start-up is a clean stop: {status}\n{}",
        agent.log()
    );
    node.assert_no_rules(&rules.chain, "after SIGTERM with --remove-iptables-on-exit");
    assert!(
        node.net
            .nat_listing()
            .contains("-A PREROUTING -j other-chain\n"),
        "another chain's jump stays:\n{}",
        node.net.nat_listing()
    );
    node.assert_pod_reaches_imds("after the agent is uninstalled")
        .await;
}

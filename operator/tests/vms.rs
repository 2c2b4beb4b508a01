//! Availability-set clusters (`vmType: standard`): nodes are standalone VMs, and the controller
//! assigns each identity to the VMs of the nodes whose pods need it, end to end against the real
//! API server and the Azure emulator — assign, move to another node, remove — as for scale sets.

mod common;

use std::time::Duration;

use common::*;
use podid_azure_emulator::{Emulator, MachineSeed, Seed, Settings};
use podid_testkit::{Cluster, NodePool};

#[tokio::test]
async fn identities_follow_their_pods_across_standalone_vms() {
    let _serial = one_controller_at_a_time().await;
    let cluster = Cluster::shared_async().await;
    clean_slate(cluster).await;
    let ns = cluster.namespace("op-vm").await;
    let c = ns.client.clone();
    let pool = NodePool::availability_set("opvm", 2);
    cluster.add_nodes(&pool).await.expect("fake VM nodes ready");
    let emu = Emulator::start(Settings::default()).await.unwrap();
    emu.add_app(APP.0, Some(APP.1), None);
    emu.seed(&Seed {
        virtual_machines: (0..2)
            .map(|i| MachineSeed {
                resource_group: pool.resource_group.clone(),
                name: pool.node_name(i),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
    .unwrap();
    let (vm0, vm1) = (pool.machine_id(0), pool.machine_id(1));
    let web = emu.add_identity("rg", "vm-web");
    let kubelet = emu.add_identity(&pool.resource_group, "vm-kubelet");
    emu.preassign(&vm0, &kubelet.id);
    identity(&c, &ns.name, "web", 0, &web.id, &web.client_id).await;
    binding(&c, &ns.name, "web", "web", "op-vm-web").await;
    let replica = start(&c, &emu, "vm", &ns.name, Duration::from_secs(15)).await;

    // A pod on VM 0: the identity goes on VM 0 only, beside the one that was there before.
    pod(&c, &ns.name, "a", &pool.node_name(0), "op-vm-web").await;
    let a = format!("a-{}-web", ns.name);
    wait_assigned(&c, &ns.name, std::slice::from_ref(&a), 60).await;
    wait_machine(&emu, &vm0, &[&kubelet.id, &web.id], 30).await;
    wait_machine(&emu, &vm1, &[], 5).await;

    // It moves to VM 1: assigned there, removed from VM 0 (the pre-existing one stays).
    pod(&c, &ns.name, "b", &pool.node_name(1), "op-vm-web").await;
    delete_pod(&c, &ns.name, "a").await;
    let b = format!("b-{}-web", ns.name);
    wait_assigned(&c, &ns.name, std::slice::from_ref(&b), 60).await;
    wait_machine(&emu, &vm1, &[&web.id], 30).await;
    wait_machine(&emu, &vm0, &[&kubelet.id], 30).await;
    assert!(
        emu.call_count("PATCH vm") >= 2,
        "VMs are written as VMs: {:?}",
        emu.calls()
    );
    assert_eq!(emu.call_count("PATCH vmss"), 0, "{:?}", emu.calls());

    // It goes: nothing of podid's is left on any VM.
    delete_pod(&c, &ns.name, "b").await;
    wait_assigned(&c, &ns.name, &[], 60).await;
    wait_machine(&emu, &vm1, &[], 30).await;
    wait_machine(&emu, &vm0, &[&kubelet.id], 5).await;
    replica.stop().await;
}

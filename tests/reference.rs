//! The public Phoenix configuration files, read unchanged from
//! `../shared/reference/phoenix-etc/` (not copied into the project).

mod common;

use phoenix_hooks::phoenix::{self, GuestType, SwarmRole};

#[test]
fn the_reference_files_load_with_what_the_toolkit_uses() {
    let Some(dir) = common::reference_etc() else {
        return;
    };
    let reference = |name: &str| dir.join(name);
    let lxc = phoenix::read_lxc_configs(&reference("phoenix_lxc_configs.json")).unwrap();
    let ca = &lxc.lxc_configs[&103];
    assert_eq!(ca.name, "Step-CA");
    assert_eq!(
        ca.mount_points[0].host_path,
        std::path::PathBuf::from("/mnt/pve/quickOS/lxc-persistent-data/103/ssl")
    );
    assert_eq!(lxc.lxc_configs[&101].mount_points.len(), 3);

    let vms = phoenix::read_vm_configs(&reference("phoenix_vm_configs.json")).unwrap();
    let manager = vms.vms.iter().find(|v| v.vmid == 1001).unwrap();
    assert_eq!(manager.swarm_role, Some(SwarmRole::Manager));
    assert_eq!(
        manager.network_config.as_ref().unwrap().address(),
        Some("10.0.0.111".parse().unwrap())
    );
    let worker = vms.vms.iter().find(|v| v.vmid == 1002).unwrap();
    assert_eq!(
        worker.node_labels.as_deref(),
        Some(&["gpu=false".to_string()][..])
    );

    let manifest = phoenix::read_manifest(&reference("certificate-manifest.json")).unwrap();
    assert_eq!(manifest.len(), 8);
    assert_eq!(
        manifest
            .iter()
            .filter(|e| e.guest_type == GuestType::Vm)
            .count(),
        4
    );
    assert!(manifest.iter().all(|e| e.post_renewal_command.is_some()));
}

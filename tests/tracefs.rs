//! tracefs on a fresh machine may not be mounted: sniffer mounts it itself. Its own test
//! binary, because it unmounts tracefs for a moment and other tests attach through it (cargo
//! runs test binaries one at a time).
use std::{path::Path, process::Command, time::Duration};

use sniffer_tests::{kernel_tests, sniff_command};

const TRACEFS: &str = "/sys/kernel/tracing";

fn mounted() -> bool {
    Path::new(TRACEFS).join("events").is_dir()
}

/// Puts tracefs back if the test leaves it unmounted.
struct Remount;

impl Drop for Remount {
    fn drop(&mut self) {
        if !mounted() {
            let _ = Command::new("mount")
                .args(["-t", "tracefs", "nodev", TRACEFS])
                .status();
        }
    }
}

#[test]
fn tracefs_is_mounted_when_missing() {
    if !kernel_tests() {
        return;
    }
    let _remount = Remount;
    // Unmount every tracefs stacked on the mount point (bounded).
    for _ in 0..8 {
        if !mounted() {
            break;
        }
        let st = Command::new("umount")
            .arg(TRACEFS)
            .status()
            .expect("umount");
        assert!(st.success(), "cannot unmount {TRACEFS} for the test");
    }
    assert!(!mounted(), "tracefs still mounted");
    let cap = sniff_command(&[], &["true"], Duration::from_secs(60));
    assert!(cap.status.success(), "{}", cap.describe());
    assert!(mounted(), "sniffer did not mount tracefs");
}

//! Winograd against a direct loop: every tile size, path and channel count.

use super::*;

#[test]
fn few_tiles_and_many_channels_take_the_phased_path() {
    // The shapes of kernels.rs's phased-path test cases (F(2x2) on 7x7: 16 tiles per
    // image), and ResNet-50's 14x14 and 7x7 layers at batch 1.
    for (tiles, cin, cout) in [(16, 96, 300), (32, 72, 100), (49, 256, 256), (16, 512, 512)] {
        let (_, _, nsplit, _) = plan(16, tiles, cin, cout, 2);
        assert!(
            nsplit > 1,
            "{tiles} tiles, {cin}->{cout}: {nsplit} column ranges"
        );
    }
    // Many tiles: blocks of tiles, no column split.
    assert_eq!(plan(36, 196, 64, 64, 2).2, 1);
}

//! Placement: consistent hashing of names onto the ring of live members. Every node
//! computes the same placement from the same member list, so no placement table exists.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use super::name::SdfsName;
use crate::types::NodeAddr;

fn point(bytes: &[u8]) -> u64 {
    let d = Sha256::digest(bytes);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The live members ordered by their position on the hash ring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ring {
    nodes: Vec<(u64, NodeAddr)>,
}

impl Ring {
    pub fn new<'a>(members: impl IntoIterator<Item = &'a NodeAddr>) -> Self {
        let mut nodes: Vec<(u64, NodeAddr)> = members
            .into_iter()
            .map(|m| (point(m.as_str().as_bytes()), m.clone()))
            .collect();
        nodes.sort();
        nodes.dedup();
        Ring { nodes }
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn contains(&self, node: &NodeAddr) -> bool {
        self.nodes.iter().any(|(_, n)| n == node)
    }

    pub fn members(&self) -> impl Iterator<Item = &NodeAddr> {
        self.nodes.iter().map(|(_, n)| n)
    }

    /// The first `n` members clockwise from the name's point, skipping `exclude`. The
    /// first is the name's primary. Removing members never reorders the survivors, so
    /// after failures the surviving holders are still at the front of the placement.
    pub fn placement_excluding(
        &self,
        name: &SdfsName,
        n: usize,
        exclude: &BTreeSet<NodeAddr>,
    ) -> Vec<NodeAddr> {
        let h = point(name.as_str().as_bytes());
        let start = self.nodes.partition_point(|(p, _)| *p < h);
        let len = self.nodes.len();
        (0..len)
            .filter_map(|i| self.nodes.get((start + i) % len).map(|(_, a)| a))
            .filter(|a| !exclude.contains(*a))
            .take(n)
            .cloned()
            .collect()
    }

    pub fn placement(&self, name: &SdfsName, n: usize) -> Vec<NodeAddr> {
        self.placement_excluding(name, n, &BTreeSet::new())
    }

    pub fn primary(&self, name: &SdfsName) -> Option<NodeAddr> {
        self.placement(name, 1).into_iter().next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<NodeAddr> {
        (0..n)
            .map(|i| NodeAddr::new("10.0.0.1", 7000 + i as u16))
            .collect()
    }

    #[test]
    fn placement_is_distinct_and_stable_under_removal() {
        let all = nodes(10);
        let ring = Ring::new(&all);
        for i in 0..200 {
            let name = SdfsName::parse(&format!("file{i}")).unwrap();
            let p = ring.placement(&name, 4);
            assert_eq!(p.len(), 4);
            assert_eq!(p.iter().collect::<BTreeSet<_>>().len(), 4);
            // Kill two holders: the two survivors stay at the front, in order.
            let dead: BTreeSet<_> = p.iter().take(2).cloned().collect();
            let rest: Vec<_> = all.iter().filter(|a| !dead.contains(*a)).cloned().collect();
            let p2 = Ring::new(&rest).placement(&name, 4);
            assert_eq!(p2[..2], p[2..]);
        }
    }

    #[test]
    fn small_rings_and_exclusion() {
        let all = nodes(3);
        let ring = Ring::new(&all);
        let name = SdfsName::parse("x").unwrap();
        assert_eq!(ring.placement(&name, 4).len(), 3);
        let ex: BTreeSet<_> = ring.placement(&name, 1).into_iter().collect();
        let p = ring.placement_excluding(&name, 4, &ex);
        assert_eq!(p.len(), 2);
        assert!(!p.iter().any(|a| ex.contains(a)));
        assert!(Ring::new(&[]).placement(&name, 4).is_empty());
    }
}

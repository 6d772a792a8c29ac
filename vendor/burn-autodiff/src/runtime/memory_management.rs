use crate::{
    NodeId,
    collections::{HashMap, HashSet},
    graph::Parent,
    tensor::NodeRefCount,
};
use alloc::{borrow::ToOwned, sync::Arc, vec, vec::Vec};
use core::mem;

#[derive(Default, Debug)]
pub struct GraphMemoryManagement {
    // kiln patch: the parents are kept whole (with `Parent::is_leaf`) rather than as ids, so that
    // a consumed leaf does not invalidate the branches that use it (tracel-ai/burn#5645).
    nodes: HashMap<NodeRefCount, Vec<Parent>>,
    leaves: HashSet<NodeId>,
    statuses: HashMap<NodeId, NodeMemoryStatus>,
}

#[derive(Debug, Clone, PartialEq)]
enum NodeMemoryStatus {
    Useful,
    Unavailable,
    Unknown,
}

impl GraphMemoryManagement {
    pub fn extend(&mut self, other: Self) {
        self.nodes.extend(other.nodes);
        self.leaves.extend(other.leaves);
        self.statuses.extend(other.statuses);
    }

    /// Register a new node with its parent.
    pub fn register(&mut self, node: NodeRefCount, parents: &[Parent]) {
        let node_id = *node.as_ref();

        for parent in parents.iter() {
            self.leaves.remove(&parent.id);
        }

        self.leaves.insert(node_id);
        // kiln patch: keep `Parent::is_leaf` (tracel-ai/burn#5645).
        self.nodes.insert(node, parents.to_vec());
    }

    /// Free the node from the state.
    pub fn consume_node(&mut self, node_id: NodeId) {
        if !self.is_referenced(node_id) {
            self.leaves.remove(&node_id);
            self.nodes.remove(&node_id);
        }
    }

    /// Free all nodes whose backward call has become impossible
    ///
    /// This function goes into three steps, which must happen for all leaves
    /// before going into the next step. Then it deletes what can be safely deleted
    pub(crate) fn free_unavailable_nodes(&mut self, mut on_free_graph: impl FnMut(&NodeId)) {
        let leaves = self.leaves.clone();
        let mut new_leaves = HashSet::new();
        let mut deletables = Vec::new();

        // When consuming nodes with a backward pass, some other backward passes become
        // unavailable because some of their parents have been consumed. They are
        // identified here.
        for leaf in leaves.clone() {
            self.unavailable_propagation(leaf);
        }

        // Among the available nodes that remain, some may be useless if no
        // available node with a tensor reference exist in their descendance.
        // But some may seem useless from some leaf but be useful from another one,
        // hence the need to iterate on all leaves.
        self.useful_propagation(leaves.clone());

        // New leaves are the roots of a useful backward sub-tree.
        // Deletables are everything not marked as useful.
        for leaf in leaves {
            self.identify_leaves_and_deletables(leaf, &mut new_leaves, &mut deletables);
        }

        // Replace leaves by the new ones and delete everything not useful anymore
        mem::swap(&mut self.leaves, &mut new_leaves);

        self.clear_unused_roots(&mut deletables);

        self.statuses.clear();
        for node_to_delete in deletables {
            self.nodes.remove(&node_to_delete);
            on_free_graph(&node_to_delete)
        }
    }

    pub(crate) fn free_unused_roots(&mut self, mut on_free_graph: impl FnMut(&NodeId)) {
        let mut deletables = Vec::new();
        self.clear_unused_roots(&mut deletables);

        for node_id in deletables {
            self.nodes.remove(&node_id);
            on_free_graph(&node_id);
        }
    }

    fn clear_unused_roots(&self, to_delete: &mut Vec<NodeId>) {
        for (id, parents) in self.nodes.iter() {
            let is_useful = matches!(
                self.statuses.get(id.as_ref()),
                Some(NodeMemoryStatus::Useful)
            );

            // Check if parents are either empty or absent from self.nodes
            // kiln patch: parents are `Parent`s (tracel-ai/burn#5645).
            let parents_absent = parents.iter().all(|p| !self.nodes.contains_key(&p.id));

            if !is_useful && Arc::strong_count(id) == 1 && parents_absent {
                to_delete.push(*id.as_ref())
            }
        }
    }

    fn unavailable_propagation(&mut self, node_id: NodeId) -> NodeMemoryStatus {
        // If already visited
        if let Some(status) = self.statuses.get(&node_id) {
            return status.clone();
        }

        match self.nodes.get(&node_id).cloned() {
            // If node exists and any of its parents is unavailable, it is unavailable as well
            // If node exists but the parents vec is empty, it is a tensor that never had parents;
            //  the status remains unknown
            Some(parents) => {
                let mut node_status = NodeMemoryStatus::Unknown;
                for parent in parents {
                    // kiln patch (tracel-ai/burn#5645): consuming a leaf's no-op step must not
                    // invalidate another branch, including when the leaf's tensor handle has
                    // already been dropped.
                    if parent.is_leaf && !self.nodes.contains_key(&parent.id) {
                        continue;
                    }
                    let parent_status = self.unavailable_propagation(parent.id);
                    if let NodeMemoryStatus::Unavailable = parent_status {
                        node_status = NodeMemoryStatus::Unavailable;
                    }
                }
                self.statuses.insert(node_id, node_status.clone());
                node_status
            }
            // If node does not exist, it was
            // deleted, so this and all its descendants are unavailable
            None => {
                self.statuses.insert(node_id, NodeMemoryStatus::Unavailable);
                NodeMemoryStatus::Unavailable
            }
        }
    }

    fn useful_propagation(&mut self, leaves: HashSet<NodeId>) {
        // Accumulate visited nodes
        let mut explored = HashSet::new();
        let mut tagged_useful = HashSet::new();

        // Queue of nodes to visit
        let mut to_tag_useful = PopNodeSet::default();
        let mut to_explore = PopNodeSet::new(leaves);

        // Utility function to iterate over a node's parents
        let parents = |node_id| {
            self.nodes
                .get(&node_id)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                // kiln patch: skip consumed leaves (tracel-ai/burn#5645).
                .filter(|parent| !parent.is_leaf || self.nodes.contains_key(&parent.id))
                .map(|parent| parent.id)
        };

        loop {
            // Pop a node id, greedily looking at tag_useful ones first
            let (node_id, status) = match to_tag_useful.pop() {
                Some(node_id) => (node_id, NodeMemoryStatus::Useful),
                None => match to_explore.pop() {
                    Some(node_id) => {
                        let node_status = self
                            .statuses
                            .get(&node_id)
                            .expect("All nodes should have received a status during unavailable_propagation")
                            .to_owned();

                        if let NodeMemoryStatus::Unknown = node_status {
                            match self.is_referenced(node_id) {
                                true => (node_id, NodeMemoryStatus::Useful),
                                false => (node_id, NodeMemoryStatus::Unknown),
                            }
                        } else {
                            (node_id, node_status)
                        }
                    }
                    None => {
                        // There are no nodes in the queues anymore
                        break;
                    }
                },
            };

            match status {
                NodeMemoryStatus::Useful => {
                    tagged_useful.insert(node_id);
                    for parent in parents(node_id) {
                        // The node can be explored, as long as it's not already tagged useful
                        if !(tagged_useful.contains(&parent) || to_tag_useful.contains(&parent)) {
                            to_tag_useful.insert(parent);
                        }
                    }
                }
                _ => {
                    explored.insert(node_id);
                    for parent in parents(node_id) {
                        if !(explored.contains(&parent) || to_explore.contains(&parent)) {
                            to_explore.insert(parent);
                        }
                    }
                }
            }

            self.statuses.insert(node_id, status);
        }
    }

    fn identify_leaves_and_deletables(
        &self,
        leaf_id: NodeId,
        new_leaves: &mut HashSet<NodeId>,
        to_delete: &mut Vec<NodeId>,
    ) {
        let mut visited = HashSet::new();
        let mut to_visit = vec![leaf_id];

        while let Some(node_id) = to_visit.pop() {
            visited.insert(node_id);

            match self
                .statuses
                .get(&node_id)
                .expect("Node should have status")
            {
                NodeMemoryStatus::Useful => {
                    new_leaves.insert(node_id);
                }
                _ => {
                    to_delete.push(node_id);

                    for parent in self
                        .nodes
                        .get(&node_id)
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        // kiln patch: skip consumed leaves (tracel-ai/burn#5645).
                        .filter(|parent| !parent.is_leaf || self.nodes.contains_key(&parent.id))
                        .map(|parent| parent.id)
                    {
                        if !visited.contains(&parent) {
                            to_visit.push(parent);
                        }
                    }
                }
            };
        }
    }

    fn is_referenced(&self, node_id: NodeId) -> bool {
        match self.nodes.get_key_value(&node_id) {
            Some((key, _value)) => Arc::strong_count(key) > 1,
            None => panic!("Node should be in the nodes map"),
        }
    }

    pub(crate) fn maybe_useful(&self) -> bool {
        self.nodes.keys().any(|node| Arc::strong_count(node) > 1)
    }
}

/// Wrapper over hash set for fast popping of any node
#[derive(new, Default)]
struct PopNodeSet {
    hash_set: HashSet<NodeId>,
}

impl PopNodeSet {
    #[inline(always)]
    fn pop(&mut self) -> Option<NodeId> {
        self.hash_set
            .iter()
            .next()
            .copied()
            .and_then(|node_id| self.hash_set.take(&node_id))
    }

    #[inline(always)]
    fn contains(&self, node_id: &NodeId) -> bool {
        self.hash_set.contains(node_id)
    }

    #[inline(always)]
    fn insert(&mut self, node_id: NodeId) {
        self.hash_set.insert(node_id);
    }
}

// kiln patch: unit tests of the `Parent::is_leaf` handling (tracel-ai/burn#5645) and of
// `NodeGuard` (tracel-ai/burn#5647).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        graph::{ComputingProperty, Node, NodeRef, Requirement},
        ops::NodeGuard,
        runtime::AutodiffClientImpl,
    };

    fn id(value: u64) -> NodeId {
        NodeId { value }
    }

    /// Leaf 0 with two branches, 1 = f(0) and 2 = g(0); a backward pass from 1 has consumed
    /// 1 and 0, whose tensors are gone. Returns 2's token and the nodes the cleanup frees.
    fn consume_one_branch(keep_other_branch: bool) -> (Option<NodeRefCount>, Vec<NodeId>) {
        let mut memory = GraphMemoryManagement::default();
        let leaf = [Parent::new(id(0), true)];
        memory.register(Arc::new(id(0)), &[]);
        memory.register(Arc::new(id(1)), &leaf);
        let other = Arc::new(id(2));
        memory.register(other.clone(), &leaf);

        memory.consume_node(id(1));
        memory.consume_node(id(0));

        let other = keep_other_branch.then_some(other);
        let mut freed = Vec::new();
        memory.free_unavailable_nodes(|node| freed.push(*node));
        (other, freed)
    }

    #[test]
    fn consumed_leaf_keeps_a_live_branch() {
        let (_other, freed) = consume_one_branch(true);
        assert!(freed.is_empty(), "freed {freed:?}");
    }

    #[test]
    fn consumed_leaf_still_frees_an_abandoned_branch() {
        let (_, mut freed) = consume_one_branch(false);
        // (0.21 may report a node twice: once as unavailable and once as an unused root.)
        freed.dedup();
        assert_eq!(freed, vec![id(2)]);
    }

    #[test]
    fn guard_keeps_its_node_from_the_orphan_sweep() {
        let node: NodeRef = Arc::new(Node::new(
            vec![],
            1,
            id(1),
            Requirement::Grad,
            ComputingProperty::Ambiguous,
            AutodiffClientImpl::new(),
            #[cfg(feature = "distributed")]
            None,
        ));
        let rc: NodeRefCount = Arc::new(id(1));
        let mut memory = GraphMemoryManagement::default();
        memory.register(rc.clone(), &[Parent::new(id(0), true)]);

        // The tensor is consumed by an operation that has not registered its step yet.
        let guard = NodeGuard::new(node, rc);
        let mut freed = Vec::new();
        memory.free_unused_roots(|node| freed.push(*node));
        assert!(freed.is_empty(), "freed {freed:?} while guarded");
        assert_eq!(guard.id(), id(1));

        drop(guard);
        memory.free_unused_roots(|node| freed.push(*node));
        assert_eq!(freed, vec![id(1)]);
    }
}

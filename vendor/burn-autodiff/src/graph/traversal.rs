use super::{Step, StepBoxed};
use crate::{
    NodeId,
    collections::{HashMap, HashSet},
    graph::Parent,
};
// kiln patch: `vec!` for `collect_steps` (tracel-ai/burn#5645).
use alloc::{vec, vec::Vec};

/// Breadth for search algorithm.
pub struct BreadthFirstSearch;

// kiln patch: `id` and `parent_nodes` dropped with 0.21's `traverse`, their only user
// (tracel-ai/burn#5645).
pub trait TraversalItem {
    fn parents(&self) -> &[Parent];
}

impl BreadthFirstSearch {
    // kiln patch: replaces 0.21's destructive `traverse` (tracel-ai/burn#5645). `traverse`
    // removed each step it reached and silently skipped a parent whose step was missing, so a
    // backward pass through an intermediate whose step had been consumed (an earlier backward)
    // or freed (graph cleanup, e.g. the race of tracel-ai/burn#5573) returned gradients that
    // lacked that branch, without any error. This collects the steps without removing them and
    // reports the first missing non-leaf step; the server consumes them only once all exist.
    /// Validate ancestry and collect each available step once, starting with the root.
    ///
    /// A missing leaf step is harmless: gradients terminate there. Every non-leaf must
    /// still have its backward step. No steps are removed: the caller consumes the returned
    /// IDs, which follow the order in which 0.21's `traverse` visited them.
    pub fn collect_steps<I: TraversalItem>(
        &self,
        root_id: NodeId,
        steps: &HashMap<NodeId, I>,
    ) -> Result<Vec<NodeId>, NodeId> {
        let root = steps.get(&root_id).ok_or(root_id)?;
        let mut nodes = vec![root_id];
        let mut visited = HashSet::new();
        let mut parents = root.parents().to_vec();
        visited.insert(root_id);

        while let Some(parent) = parents.pop() {
            if !visited.insert(parent.id) {
                continue;
            }
            match steps.get(&parent.id) {
                Some(step) => {
                    nodes.push(parent.id);
                    parents.extend_from_slice(step.parents());
                }
                None if parent.is_leaf => {}
                None => return Err(parent.id),
            }
        }

        Ok(nodes)
    }
}

impl TraversalItem for StepBoxed {
    fn parents(&self) -> &[Parent] {
        Step::parents(self.as_ref())
    }
}

// kiln patch: unit tests of `collect_steps` (tracel-ai/burn#5645).
#[cfg(test)]
mod tests {
    use super::*;

    struct Item(Vec<Parent>);

    impl TraversalItem for Item {
        fn parents(&self) -> &[Parent] {
            &self.0
        }
    }

    fn id(value: u64) -> NodeId {
        NodeId { value }
    }

    /// Leaf 0 and 1; 2 = f(0, 1); 3 = g(2, 0): the steps of all four, by id.
    fn steps() -> HashMap<NodeId, Item> {
        let mut steps = HashMap::new();
        steps.insert(id(0), Item(vec![]));
        steps.insert(id(1), Item(vec![]));
        steps.insert(
            id(2),
            Item(vec![Parent::new(id(0), true), Parent::new(id(1), true)]),
        );
        steps.insert(
            id(3),
            Item(vec![Parent::new(id(2), false), Parent::new(id(0), true)]),
        );
        steps
    }

    #[test]
    fn collects_each_reachable_step_once_root_first() {
        let steps = steps();
        let nodes = BreadthFirstSearch.collect_steps(id(3), &steps).unwrap();
        // The order of 0.21's `traverse`: the last pushed parent first.
        assert_eq!(nodes, vec![id(3), id(0), id(2), id(1)]);
        assert_eq!(steps.len(), 4, "nothing is consumed");
    }

    #[test]
    fn accepts_a_consumed_leaf() {
        let mut steps = steps();
        steps.remove(&id(0));
        let nodes = BreadthFirstSearch.collect_steps(id(3), &steps).unwrap();
        assert_eq!(nodes, vec![id(3), id(2), id(1)]);
    }

    #[test]
    fn rejects_a_consumed_intermediate() {
        let mut steps = steps();
        steps.remove(&id(2));
        assert_eq!(BreadthFirstSearch.collect_steps(id(3), &steps), Err(id(2)));
        assert_eq!(BreadthFirstSearch.collect_steps(id(4), &steps), Err(id(4)));
    }
}

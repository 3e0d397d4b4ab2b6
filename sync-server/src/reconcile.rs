//! Reconcile: recompute every balance from the central journal, compare with the agents, check
//! the chains and the exactly-once invariants, list every difference. (stub: to be written)

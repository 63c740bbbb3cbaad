//! Plan and executor tests of the ReplicaSet controller.

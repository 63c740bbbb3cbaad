//! Plan and executor tests of the Deployment controller.

//! The one integration-test binary: parity with transformers and PEFT, engine invariants,
//! the command line end to end, and bad input.

mod suite;

//! Azure emulator.

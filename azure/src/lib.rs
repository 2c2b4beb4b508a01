//! Azure access for podid, behind small project-owned traits.

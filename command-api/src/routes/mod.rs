//! HTTP routes, one file per resource, merged into one router.

pub mod orders;

#[cfg(test)]
mod tests;

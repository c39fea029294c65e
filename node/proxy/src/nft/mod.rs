//! The nftables backend: the virtual services as one table of our own. A verdict map sends
//! VIP . protocol . port to a pick chain shared by every service with the same protocol and
//! number of endpoints (`pick-tcp-3`: `dnat to ip daddr . tcp dport . numgen random mod 3 map
//! @endpoints-tcp`); the endpoints themselves are elements of a data map. An endpoint change is then
//! a few map elements, sent as one nf_tables transaction over netlink: no rule changes, so the
//! kernel does not re-validate the table, and no `nft` parsing. Services with ClientIP affinity
//! keep a chain of their own (a cascade with one chain and one timeout set per endpoint).
//!
//! An [`Update`] is applied in three steps, each atomic: chains and sets that elements will
//! point at (`nft -f`), then every element change (one netlink transaction: what traffic sees
//! switches at once), then chains and sets nothing points at any more (`nft -f`).
//!
//! [`model`] builds the ruleset and [`render`] the updates, both pure; [`exec`] ([`Nft`]) is the
//! thin edge that runs `nft` and the netlink transaction, optionally inside a network namespace.

mod elements;
mod exec;
mod model;
mod netlink;
mod render;

pub use elements::{ClusterKey, ElementOp, Entry, PortKey};
pub use exec::Nft;
pub use model::{NftSettings, Ruleset, Spread};
pub use render::{Listing, Renderer, Update, full_update, hairpin_update, ipvs_guard_script, parse_listing};

#[cfg(test)]
mod tests;

//! Hostname backends: DNS lookups with hickory and re-resolution at the answer TTL.

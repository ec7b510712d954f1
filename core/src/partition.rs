//! Stable hashing of keys to partitions and consumer-group members.
//!
//! The hash is CRC-32 (IEEE) of the key's UTF-8 bytes, available in every
//! language's standard library (`zlib.crc32`, `hash/crc32`, `java.util.zip.CRC32`,
//! `:erlang.crc32`), so any program can compute where a key goes.

use uuid::Uuid;

/// Default number of outbox partitions.
pub const DEFAULT_PARTITIONS: u32 = 16;

/// The 32-bit hash of a key.
pub fn key_hash(key: &str) -> u32 {
    crc32fast::hash(key.as_bytes())
}

/// The hash that places a message: its key's, or for a keyless message its id's
/// hyphenated text (keyless messages have no order to keep, so they spread out).
pub fn routing_hash(key: Option<&str>, id: &Uuid) -> u32 {
    match key {
        Some(k) => key_hash(k),
        None => key_hash(&id.hyphenated().to_string()),
    }
}

/// The outbox partition of a message among `partitions`.
pub fn partition_for(key: Option<&str>, id: &Uuid, partitions: u32) -> u32 {
    routing_hash(key, id) % partitions.max(1)
}

/// Whether consumer-group member `member` of `size` owns a message.
pub fn member_owns(key: Option<&str>, id: &Uuid, member: u32, size: u32) -> bool {
    size <= 1 || routing_hash(key, id) % size == member
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_reference_values() {
        // Reference: zlib.crc32(b"123456789") == 0xCBF43926.
        assert_eq!(key_hash("123456789"), 0xCBF4_3926);
        assert_eq!(
            partition_for(Some("123456789"), &Uuid::nil(), 16),
            0xCBF4_3926 % 16
        );
    }

    #[test]
    fn members_split_without_overlap() {
        for i in 0..100 {
            let key = format!("k{i}");
            let owners = (0..3)
                .filter(|m| member_owns(Some(&key), &Uuid::nil(), *m, 3))
                .count();
            assert_eq!(owners, 1);
        }
    }
}

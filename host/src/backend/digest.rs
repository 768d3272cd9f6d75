//! Row digests: what a stored checkpoint or result says of itself, so a
//! store can tell a row that changed since it was written (a flipped bit,
//! a hand edit) from what it wrote. Both SQL stores keep them. Imports
//! nothing.

/// What a stored row says of itself, to find it changed since it was
/// written (SQLite keeps no checksums of its own; PostgreSQL only with
/// data checksums on): BLAKE3 over the columns
/// a write sets, each with its length, 128 bits in hex.
fn digest(parts: &[&[u8]]) -> String {
    let mut h = blake3::Hasher::new();
    for part in parts {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().to_hex()[..32].to_string()
}

pub(super) fn checkpoint_digest(
    id: &str,
    status: &str,
    state: &str,
    step: i64,
    updated_ms: i64,
    record: &str,
) -> String {
    digest(&[
        id.as_bytes(),
        status.as_bytes(),
        state.as_bytes(),
        &step.to_le_bytes(),
        &updated_ms.to_le_bytes(),
        record.as_bytes(),
    ])
}

pub(super) fn result_digest(id: &str, status: &str, value: &str, written_ms: i64) -> String {
    digest(&[
        id.as_bytes(),
        status.as_bytes(),
        value.as_bytes(),
        &written_ms.to_le_bytes(),
    ])
}

//! Claims: runtime-unique ordinals in a group, each owning a set of volumes.
//!
//! A stateful service (Elasticsearch, Cassandra, Kafka) asks for a claim in
//! its group and gets the lowest free ordinal from 1, with the volumes
//! `GROUP-N-VOLUME` created on first use and reused, with their data, by
//! whoever holds ordinal N next. There is no upper bound on ordinals.
//!
//! This module owns the claim records, `claim/<group>/<ordinal:010>` in the
//! store, the choice of the lowest free ordinal, holder checks and TTL
//! expiry. Expiry is evaluated lazily, against the stored record, whenever a
//! claim is acquired, renewed or listed: no background task runs, and an
//! expired claim stays in the store (listed as expired) until an acquire
//! takes its ordinal or its holder releases it.
//!
//! Every change is a compare-and-swap on the claim's key (absent, or exactly
//! the record that was read), so two acquires never hand out one ordinal
//! even with several writers on one store; within this process a per-group
//! lock also serialises them, so the swap never has to be retried here.
//!
//! It must not hold volume logic: claim volumes are made through
//! [`VolumeService::create_volume`] like any other, and releasing a claim
//! never touches its volumes (their data waits for the ordinal's next
//! holder).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{validate_name, InvalidInput, MAX_NAME_LEN};
use crate::service::{to_json, CreateVolume, VolumeService};
use crate::store::{StoreError, Txn};

pub(crate) const CLAIM_PREFIX: &str = "claim/";

/// The largest ordinal: keys hold ten digits, so they sort numerically.
pub const MAX_ORDINAL: u64 = 9_999_999_999;

/// The longest TTL a claim may have.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Longest holder ID.
pub const MAX_HOLDER_LEN: usize = 256;

/// Labels put on the volumes a claim creates.
pub const LABEL_GROUP: &str = "ballast.claim.group";
pub const LABEL_ORDINAL: &str = "ballast.claim.ordinal";

/// How often an acquire retries when another writer took the ordinal it
/// chose between its read and its swap (only possible across processes).
const CAS_ATTEMPTS: usize = 32;

/// A claim as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub group: String,
    pub ordinal: u64,
    /// Who holds it; renew and release must name the same holder.
    pub holder: String,
    /// The claim's volume names, `GROUP-N-VOLUME`, in the order asked for.
    pub volumes: Vec<String>,
    pub acquired_at: DateTime<Utc>,
    /// When the claim lapses unless renewed; None: held until released.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// The TTL a renew extends the claim by, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// Set while the acquire that wrote this record is still making the
    /// claim's missing volumes (these names). The record is the acquire's
    /// intent: a start that finds it set takes the acquire back, volumes
    /// and record, since its caller never heard of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acquiring: Option<Vec<String>>,
}

impl Claim {
    /// Whether the claim has lapsed at `now`: its ordinal is free.
    pub fn expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }
}

/// A listed claim and whether it has lapsed (its ordinal is free; the record
/// stays until an acquire takes the ordinal or the holder releases it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimStatus {
    pub claim: Claim,
    pub expired: bool,
}

/// A request for the lowest free ordinal of a group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcquireClaim {
    pub group: String,
    /// Volume suffixes: `data` becomes `GROUP-N-data`.
    pub volumes: Vec<String>,
    /// Size of volumes created by this acquire (existing ones are reused at
    /// their size).
    pub size_bytes: Option<u64>,
    /// Pool of volumes created by this acquire.
    pub pool: Option<String>,
    /// None: held until released.
    pub ttl: Option<Duration>,
    pub holder: String,
}

/// The store key of a claim.
pub fn claim_key(group: &str, ordinal: u64) -> String {
    format!("{CLAIM_PREFIX}{group}/{ordinal:010}")
}

/// The name of ordinal `ordinal`'s volume `suffix` in `group`.
pub fn claim_volume_name(group: &str, ordinal: u64, suffix: &str) -> String {
    format!("{group}-{ordinal}-{suffix}")
}

/// A claim group: a valid name that leaves room for `-N-VOLUME`.
pub fn validate_group(group: &str) -> Result<(), InvalidInput> {
    validate_name("claim group", group)
}

/// The volume suffixes of an acquire: at least one, no duplicates, each a
/// name without `-` (so `GROUP-N-VOLUME` splits one way only and two groups'
/// volumes never share a name), and every `GROUP-N-VOLUME` at most 128
/// characters for any ordinal up to [`MAX_ORDINAL`].
pub fn validate_claim_volumes(group: &str, volumes: &[String]) -> Result<(), InvalidInput> {
    if volumes.is_empty() {
        return Err(InvalidInput::new(
            "volumes",
            "must name at least one volume (for example config,data)",
        ));
    }
    let longest_ordinal = MAX_ORDINAL.to_string().len();
    let mut seen = std::collections::BTreeSet::new();
    for v in volumes {
        validate_name("claim volume", v)?;
        if v.contains('-') {
            return Err(InvalidInput::new(
                format!("claim volume name {v:?}"),
                "must not contain '-' (it separates GROUP-N-VOLUME); use '_' or '.'",
            ));
        }
        if !seen.insert(v.as_str()) {
            return Err(InvalidInput::new(
                format!("volumes {:?}", volumes.join(",")),
                format!("name {v:?} more than once"),
            ));
        }
        let len = group.len() + 1 + longest_ordinal + 1 + v.len();
        if len > MAX_NAME_LEN {
            return Err(InvalidInput::new(
                format!("claim group {group:?} with volume {v:?}"),
                format!(
                    "volume names GROUP-N-VOLUME must fit in {MAX_NAME_LEN} characters \
                     with N up to {longest_ordinal} digits ({len} here)"
                ),
            ));
        }
    }
    Ok(())
}

/// A holder ID: 1 to 256 characters, no control characters. Only ever compared.
pub fn validate_holder(holder: &str) -> Result<(), InvalidInput> {
    if holder.is_empty() {
        return Err(InvalidInput::new("holder", "must not be empty"));
    }
    if holder.chars().count() > MAX_HOLDER_LEN {
        return Err(InvalidInput::new(
            format!("holder {holder:?}"),
            "is longer than 256 characters",
        ));
    }
    if holder.chars().any(char::is_control) {
        return Err(InvalidInput::new(
            format!("holder {holder:?}"),
            "contains control characters",
        ));
    }
    Ok(())
}

/// An ordinal: 1 to [`MAX_ORDINAL`], digits only.
pub fn parse_ordinal(s: &str) -> Result<u64, InvalidInput> {
    let bad = |reason: &str| Err(InvalidInput::new(format!("claim ordinal {s:?}"), reason));
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return bad("must be a number from 1");
    }
    match s.parse::<u64>() {
        Ok(0) => bad("must be at least 1"),
        Ok(n) if n <= MAX_ORDINAL => Ok(n),
        _ => bad("is too large"),
    }
}

fn validate_ordinal(ordinal: u64) -> Result<(), InvalidInput> {
    if ordinal == 0 || ordinal > MAX_ORDINAL {
        return Err(InvalidInput::new(
            format!("claim ordinal {ordinal}"),
            format!("must be from 1 to {MAX_ORDINAL}"),
        ));
    }
    Ok(())
}

/// Parse a TTL strictly: a positive whole number and one unit, `ms`, `s`,
/// `m` or `h` (`500ms`, `2s`, `5m`, `1h`), at most [`MAX_TTL`]. No bare
/// numbers, signs, decimals, spaces or compound forms.
pub fn parse_ttl(s: &str) -> Result<Duration, InvalidInput> {
    let bad = |reason: &str| Err(InvalidInput::new(format!("ttl {s:?}"), reason));
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return bad("must be a positive number with a unit: 500ms, 2s, 5m or 1h");
    }
    if digits.bytes().all(|b| b == b'0') {
        return bad("must be greater than zero");
    }
    let millis_per: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => return bad("needs a unit: ms, s, m or h (for example 30s)"),
        _ => return bad("has an unknown unit; use ms, s, m or h"),
    };
    let Ok(n) = digits.parse::<u64>() else {
        return bad("is too long (at most 365 days)");
    };
    match n.checked_mul(millis_per).map(Duration::from_millis) {
        Some(d) if d <= MAX_TTL => Ok(d),
        _ => bad("is too long (at most 365 days)"),
    }
}

fn validate_ttl(ttl: Duration) -> Result<u64, InvalidInput> {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Err(InvalidInput::new("ttl", "must be at least 1ms"));
    }
    if ttl > MAX_TTL {
        return Err(InvalidInput::new("ttl", "is too long (at most 365 days)"));
    }
    Ok(ms)
}

fn expiry(now: DateTime<Utc>, ttl_ms: Option<u64>) -> Option<DateTime<Utc>> {
    // TTLs are at most 365 days (checked), far inside i64 milliseconds.
    ttl_ms.map(|ms| now + chrono::TimeDelta::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX)))
}

/// What choosing an ordinal needs of a claim record (decoded without the
/// rest, so an acquire reads past many held claims cheaply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Slot {
    pub ordinal: u64,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// An acquire is still making this claim's volumes: held whatever its
    /// expiry says, so nobody takes the ordinal over mid-acquire.
    #[serde(default, deserialize_with = "is_some")]
    pub acquiring: bool,
}

/// Whether a field is present and not null, without decoding its value.
fn is_some<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    Ok(Option::<serde::de::IgnoredAny>::deserialize(d)?.is_some())
}

/// The lowest ordinal free at `now` among a group's slots (in ordinal
/// order), and whether an expired record occupies it.
pub fn lowest_free(slots: impl IntoIterator<Item = Slot>, now: DateTime<Utc>) -> (u64, bool) {
    let mut next = 1;
    for s in slots {
        if s.ordinal < next {
            continue;
        }
        if s.ordinal > next {
            break;
        }
        if !s.acquiring && s.expires_at.is_some_and(|e| e <= now) {
            return (next, true);
        }
        next += 1;
    }
    (next, false)
}

fn group_lock(group: &str) -> String {
    // ':' is not allowed in names, so this never meets a volume's lock.
    format!("claim:{group}")
}

fn claim_name(group: &str, ordinal: u64) -> String {
    format!("{group}/{ordinal}")
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        path: key.to_string(),
        detail: format!("claim record does not parse: {e}"),
    })
}

/// A record that changed between its read and the swap.
fn lost_race(group: &str, ordinal: u64) -> Error {
    Error::Busy {
        kind: "claim",
        name: claim_name(group, ordinal),
        detail: "it changed while this request ran; retry".into(),
    }
}

impl VolumeService {
    /// Claims in the store, of one group or all, in (group, ordinal) order,
    /// each marked expired or not as of now.
    pub fn list_claims(&self, group: Option<&str>) -> Result<Vec<ClaimStatus>> {
        let prefix = match group {
            Some(g) => {
                validate_group(g)?;
                format!("{CLAIM_PREFIX}{g}/")
            }
            None => CLAIM_PREFIX.to_string(),
        };
        let now = Utc::now();
        let mut out = Vec::new();
        for (k, v) in self.store.scan(&prefix)? {
            let claim: Claim = decode(&k, &v)?;
            out.push(ClaimStatus {
                // Mid-acquire a claim is held whatever its expiry says.
                expired: claim.acquiring.is_none() && claim.expired_at(now),
                claim,
            });
        }
        Ok(out)
    }

    /// Take the lowest free ordinal of the group (one never held, released,
    /// or expired) and make sure its volumes exist: created on first use
    /// with the request's size and pool, reused as they are afterwards. A
    /// failure leaves neither the claim nor volumes this call created.
    pub fn acquire_claim(&self, req: AcquireClaim) -> Result<Claim> {
        validate_group(&req.group)?;
        validate_claim_volumes(&req.group, &req.volumes)?;
        validate_holder(&req.holder)?;
        let ttl_ms = req.ttl.map(validate_ttl).transpose()?;
        if let Some(p) = &req.pool {
            validate_name("pool", p)?;
            self.get_pool(p)?;
        }
        let pending = {
            let _g = self.locks.lock(&group_lock(&req.group));
            self.take_lowest_free(&req, ttl_ms)?
        };
        let Some(missing) = pending.acquiring.clone() else {
            // Every volume existed: the record is final already.
            return Ok(pending);
        };
        self.failpoints.hit("claim.after_record");
        // The ordinal is ours alone from here: nobody else makes its volumes.
        let mut created: Vec<String> = Vec::new();
        for name in &missing {
            match self.ensure_claim_volume(&pending, name, &req) {
                Ok(true) => created.push(name.clone()),
                Ok(false) => {}
                Err(e) => {
                    self.undo_acquire(&pending, &created);
                    return Err(e);
                }
            }
        }
        self.failpoints.hit("claim.after_volumes");
        let mut claim = pending.clone();
        claim.acquiring = None;
        let key = claim_key(&claim.group, claim.ordinal);
        let txn = Txn::new()
            .require_equals(key.clone(), to_json(&pending))
            .put(key, to_json(&claim));
        if let Err(e) = self.store.commit(txn) {
            self.undo_acquire(&pending, &created);
            return Err(e.into());
        }
        Ok(claim)
    }

    /// Take back every acquire a crash interrupted (see
    /// [`Claim::acquiring`]): delete the volumes it made, then its record.
    /// Runs at start, after the volume intents, so a volume half made is
    /// already gone. Returns what was taken back.
    pub(crate) fn reconcile_claims(&self) -> Result<Vec<String>> {
        let mut undone = Vec::new();
        for (k, v) in self.store.scan(CLAIM_PREFIX)? {
            let claim: Claim = decode(&k, &v)?;
            let Some(missing) = &claim.acquiring else {
                continue;
            };
            // Only the volumes this claim's acquire made carry its labels.
            let made: Vec<String> = missing
                .iter()
                .filter(|n| {
                    self.volumes.read().get(*n).is_some_and(|vol| {
                        vol.labels.get(LABEL_GROUP) == Some(&claim.group)
                            && vol.labels.get(LABEL_ORDINAL) == Some(&claim.ordinal.to_string())
                    })
                })
                .cloned()
                .collect();
            self.undo_acquire(&claim, &made);
            undone.push(claim_name(&claim.group, claim.ordinal));
        }
        Ok(undone)
    }

    /// Read the group, pick the lowest free ordinal and swap the claim in.
    fn take_lowest_free(&self, req: &AcquireClaim, ttl_ms: Option<u64>) -> Result<Claim> {
        let prefix = format!("{CLAIM_PREFIX}{}/", req.group);
        for _ in 0..CAS_ATTEMPTS {
            let records = self.store.scan(&prefix)?;
            let mut slots = Vec::with_capacity(records.len());
            for (k, v) in &records {
                slots.push(decode::<Slot>(k, v)?);
            }
            // Keys sort by ordinal already; this only guards the order.
            slots.sort_unstable_by_key(|s| s.ordinal);
            let now = Utc::now();
            let (ordinal, lapsed) = lowest_free(slots, now);
            if ordinal > MAX_ORDINAL {
                return Err(Error::Busy {
                    kind: "claim group",
                    name: req.group.clone(),
                    detail: format!("all {MAX_ORDINAL} ordinals are held"),
                });
            }
            let volumes: Vec<String> = req
                .volumes
                .iter()
                .map(|v| claim_volume_name(&req.group, ordinal, v))
                .collect();
            let missing: Vec<String> = {
                let existing = self.volumes.read();
                volumes
                    .iter()
                    .filter(|n| !existing.contains_key(*n))
                    .cloned()
                    .collect()
            };
            let claim = Claim {
                group: req.group.clone(),
                ordinal,
                holder: req.holder.clone(),
                volumes,
                acquired_at: now,
                expires_at: expiry(now, ttl_ms),
                ttl_ms,
                acquiring: (!missing.is_empty()).then_some(missing),
            };
            let key = claim_key(&req.group, ordinal);
            // The expired record in the slot, which the swap must still find.
            let old = match lapsed {
                true => records.iter().find(|(k, _)| *k == key),
                false => None,
            };
            let txn = match old {
                Some((_, bytes)) => Txn::new().require_equals(key.clone(), bytes.clone()),
                None => Txn::new().require_absent(key.clone()),
            };
            match self.store.commit(txn.put(key.clone(), to_json(&claim))) {
                Ok(()) => {
                    if let Some((_, bytes)) = old {
                        let old: Claim = decode(&key, bytes)?;
                        tracing::info!(
                            group = %claim.group,
                            ordinal,
                            expired_holder = %old.holder,
                            holder = %claim.holder,
                            "expired claim taken over"
                        );
                    }
                    return Ok(claim);
                }
                // Another writer took it first: read again.
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Busy {
            kind: "claim group",
            name: req.group.clone(),
            detail: "other writers kept taking the free ordinal; retry".into(),
        })
    }

    /// Make one of the claim's volumes unless it exists; true if made here.
    fn ensure_claim_volume(&self, claim: &Claim, name: &str, req: &AcquireClaim) -> Result<bool> {
        if self.volumes.read().contains_key(name) {
            return Ok(false);
        }
        let labels = BTreeMap::from([
            (LABEL_GROUP.to_string(), claim.group.clone()),
            (LABEL_ORDINAL.to_string(), claim.ordinal.to_string()),
        ]);
        match self.create_volume(CreateVolume {
            name: name.to_string(),
            size_bytes: req.size_bytes,
            pool: req.pool.clone(),
            labels,
            ..CreateVolume::default()
        }) {
            Ok(_) => Ok(true),
            // Made meanwhile by someone else (not through this claim):
            // reuse it as an existing volume.
            Err(Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Undo a failed acquire: delete the volumes it made and its record.
    fn undo_acquire(&self, claim: &Claim, created: &[String]) {
        for name in created {
            if let Err(e) = self.delete_volume(name, false) {
                tracing::warn!(volume = %name, error = %e, "could not remove a failed claim's new volume");
            }
        }
        let _g = self.locks.lock(&group_lock(&claim.group));
        let key = claim_key(&claim.group, claim.ordinal);
        let txn = Txn::new()
            .require_equals(key.clone(), to_json(claim))
            .delete(key);
        if let Err(e) = self.store.commit(txn) {
            tracing::warn!(group = %claim.group, ordinal = claim.ordinal, error = %e,
                "could not remove a failed acquire's claim");
        }
    }

    /// The holder's stored claim and its bytes, or why not.
    fn held_claim(&self, group: &str, ordinal: u64, holder: &str) -> Result<(Claim, Vec<u8>)> {
        let key = claim_key(group, ordinal);
        let Some(bytes) = self.store.get(&key)? else {
            return Err(Error::not_found("claim", &claim_name(group, ordinal)));
        };
        let claim: Claim = decode(&key, &bytes)?;
        if claim.acquiring.is_some() {
            return Err(Error::Busy {
                kind: "claim",
                name: claim_name(group, ordinal),
                detail: "its acquire is still making its volumes; retry".into(),
            });
        }
        if claim.holder != holder {
            return Err(Error::Busy {
                kind: "claim",
                name: claim_name(group, ordinal),
                detail: format!("it is held by {:?}, not by {holder:?}", claim.holder),
            });
        }
        Ok((claim, bytes))
    }

    /// Push a claim's expiry to now + its TTL (or a new `ttl`, which also
    /// gives a claim without one a TTL). A claim that has expired is
    /// renewed too as long as no acquire has taken its ordinal since.
    pub fn renew_claim(
        &self,
        group: &str,
        ordinal: u64,
        holder: &str,
        ttl: Option<Duration>,
    ) -> Result<Claim> {
        validate_group(group)?;
        validate_ordinal(ordinal)?;
        validate_holder(holder)?;
        let ttl_ms = ttl.map(validate_ttl).transpose()?;
        let _g = self.locks.lock(&group_lock(group));
        let (mut claim, bytes) = self.held_claim(group, ordinal, holder)?;
        claim.ttl_ms = ttl_ms.or(claim.ttl_ms);
        if claim.ttl_ms.is_none() {
            return Ok(claim);
        }
        claim.expires_at = expiry(Utc::now(), claim.ttl_ms);
        let key = claim_key(group, ordinal);
        let txn = Txn::new()
            .require_equals(key.clone(), bytes)
            .put(key, to_json(&claim));
        match self.store.commit(txn) {
            Ok(()) => Ok(claim),
            Err(StoreError::Conflict { .. }) => Err(lost_race(group, ordinal)),
            Err(e) => Err(e.into()),
        }
    }

    /// Give the ordinal back; its volumes stay, with their data, for the
    /// next holder. Returns the claim as it was.
    pub fn release_claim(&self, group: &str, ordinal: u64, holder: &str) -> Result<Claim> {
        validate_group(group)?;
        validate_ordinal(ordinal)?;
        validate_holder(holder)?;
        let _g = self.locks.lock(&group_lock(group));
        let (claim, bytes) = self.held_claim(group, ordinal, holder)?;
        let key = claim_key(group, ordinal);
        let txn = Txn::new().require_equals(key.clone(), bytes).delete(key);
        match self.store.commit(txn) {
            Ok(()) => Ok(claim),
            Err(StoreError::Conflict { .. }) => Err(lost_race(group, ordinal)),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(ordinal: u64, expires_at: Option<DateTime<Utc>>) -> Slot {
        Slot {
            ordinal,
            expires_at,
            acquiring: false,
        }
    }

    #[test]
    fn lowest_free_ordinal() {
        let now = Utc::now();
        let past = Some(now - chrono::TimeDelta::seconds(1));
        let future = Some(now + chrono::TimeDelta::seconds(60));
        let held = |ns: &[u64]| ns.iter().map(|&n| slot(n, None)).collect::<Vec<_>>();
        assert_eq!(lowest_free([], now), (1, false));
        assert_eq!(lowest_free(held(&[1, 2, 3]), now), (4, false));
        assert_eq!(lowest_free(held(&[1, 2, 4, 5]), now), (3, false));
        assert_eq!(lowest_free(held(&[2, 3]), now), (1, false));
        // An expired claim frees its ordinal; an unexpired one does not.
        let lapsed = [slot(1, future), slot(2, past), slot(3, None)];
        assert_eq!(lowest_free(lapsed, now), (2, true));
        // Nor does one whose acquire is still making volumes, expired or not.
        let mut pending = slot(2, past);
        pending.acquiring = true;
        assert_eq!(lowest_free([slot(1, None), pending], now), (3, false));
        let decoded: Slot = serde_json::from_str(
            r#"{"ordinal":2,"expires_at":null,"acquiring":["g-2-data"],"holder":"h"}"#,
        )
        .unwrap();
        assert!(decoded.acquiring);
        let decoded: Slot = serde_json::from_str(r#"{"ordinal":2}"#).unwrap();
        assert!(!decoded.acquiring);
        assert_eq!(
            lowest_free([slot(1, future), slot(2, future)], now),
            (3, false)
        );
        // An expired claim above a gap does not matter: the gap is lower.
        assert_eq!(lowest_free([slot(1, None), slot(3, past)], now), (2, false));
        // Exactly at the expiry instant it has lapsed.
        assert_eq!(lowest_free([slot(1, Some(now))], now), (1, true));
        // Far past 32: no bitmask-like limit.
        let many: Vec<u64> = (1..=100).collect();
        assert_eq!(lowest_free(held(&many), now), (101, false));
    }

    #[test]
    fn keys_sort_by_ordinal() {
        assert_eq!(claim_key("es", 7), "claim/es/0000000007");
        assert!(claim_key("es", 9) < claim_key("es", 10));
        assert!(claim_key("es", MAX_ORDINAL - 1) < claim_key("es", MAX_ORDINAL));
        assert_eq!(claim_volume_name("es", 12, "data"), "es-12-data");
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_ttl("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_ttl("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("8760h").unwrap(), MAX_TTL);
        for bad in [
            "",
            "0",
            "0s",
            "0ms",
            "-1s",
            "-2s",
            "+2s",
            "2",
            "2 s",
            " 2s",
            "2s ",
            "1.5s",
            "2x",
            "2S",
            "s",
            "1h30m",
            "8761h",
            "99999999999999999999s",
            "1e3ms",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} accepted");
        }
        for zero in ["0", "0s", "00ms"] {
            assert!(
                parse_ttl(zero).unwrap_err().reason.contains("zero"),
                "{zero}"
            );
        }
        assert!(parse_ttl("-2s").unwrap_err().reason.contains("positive"));
        assert!(validate_ttl(Duration::ZERO).is_err());
        assert!(validate_ttl(Duration::from_micros(10)).is_err());
    }

    #[test]
    fn ordinals() {
        assert_eq!(parse_ordinal("7").unwrap(), 7);
        assert_eq!(parse_ordinal("9999999999").unwrap(), MAX_ORDINAL);
        for bad in ["", "0", "-1", "+1", "1.0", "x", "10000000000", " 1"] {
            assert!(parse_ordinal(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn claim_volume_names() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        validate_claim_volumes("es", &v(&["config", "data"])).unwrap();
        validate_claim_volumes("es-hot", &v(&["data_1", "logs.x", "9"])).unwrap();
        for (group, vols) in [
            ("es", v(&[])),
            ("es", v(&["data", "data"])),
            ("es", v(&["a-b"])),
            ("es", v(&[""])),
            ("es", v(&["-x"])),
            ("es", v(&["a/b"])),
            ("es", v(&[".x"])),
            ("es", v(&[&"d".repeat(116)])),
            (&"g".repeat(113), v(&["data"])),
        ] {
            assert!(
                validate_claim_volumes(group, &vols).is_err(),
                "{group:?} {vols:?} accepted"
            );
        }
        // The longest that fits: 2 + 1 + 10 + 1 + 114 = 128.
        validate_claim_volumes("es", &v(&[&"d".repeat(114)])).unwrap();
        for bad in ["", "-es", "es/x", "es:1", "..", &"g".repeat(129)] {
            assert!(validate_group(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn holders() {
        validate_holder("node-a:1234").unwrap();
        validate_holder(&"h".repeat(256)).unwrap();
        for bad in ["", "a\nb", "a\0", &"h".repeat(257)] {
            assert!(validate_holder(bad).is_err(), "{bad:?} accepted");
        }
    }
}

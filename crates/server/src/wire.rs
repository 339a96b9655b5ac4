//! The grammar of the REST API's text fields, written once: each rule is a
//! regular expression that the OpenAPI document publishes as its `pattern`
//! and that the handlers check before the core sees the value, so a value
//! the document forbids is a 400 and one it allows parses. The patterns use
//! only syntax that Rust's `regex`, ECMAScript and Python read alike.
//!
//! Numbers inside them are bounded exactly (a size never overflows, a TTL
//! never passes 365 days), and written without leading zeros: one spelling
//! per value.

use std::sync::LazyLock;

use ballast_core::claims::{MAX_ORDINAL, MAX_TTL};
use ballast_core::model::{InvalidInput, MAX_NAME_LEN};
use regex::Regex;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::RefOr;

/// The largest size accepted: sizes are rounded up to 4 KiB blocks, so the
/// largest that still rounds inside u64.
pub const MAX_SIZE: u64 = !4095;

/// Longest claim group an acquire takes, and longest claim volume short
/// name: `GROUP-N-VOLUME` must fit in a volume name with N up to ten digits
/// (58 + 1 + 10 + 1 + 58 = 128), and a fixed share for each keeps that rule
/// one a document can state.
pub const MAX_CLAIM_PART_LEN: usize = (MAX_NAME_LEN - 12) / 2;

/// Longest consumer ID, holder and label key, in characters.
pub const MAX_ID_LEN: usize = 256;
/// Longest label value, in characters.
pub const MAX_LABEL_VALUE_LEN: usize = 4096;

/// Decimal integers from 1 to `n`, without leading zeros, as a group.
pub fn up_to(n: u64) -> String {
    assert!(n >= 1);
    let d: Vec<u8> = n.to_string().bytes().map(|b| b - b'0').collect();
    let k = d.len();
    let mut alts = Vec::new();
    if k > 1 {
        // Every number with fewer digits.
        alts.push(if k == 2 {
            "[1-9]".to_string()
        } else {
            format!("[1-9][0-9]{{0,{}}}", k - 2)
        });
    }
    // k digits: the first i digits as in n, the next one lower, any rest.
    for i in 0..k {
        let lo = if i == 0 { 1 } else { 0 };
        if d[i] == lo {
            continue;
        }
        let prefix: String = d[..i].iter().map(|x| char::from(b'0' + x)).collect();
        let class = if d[i] - 1 == lo {
            format!("{lo}")
        } else {
            format!("[{lo}-{}]", d[i] - 1)
        };
        let rest = match k - i - 1 {
            0 => String::new(),
            1 => "[0-9]".to_string(),
            r => format!("[0-9]{{{r}}}"),
        };
        alts.push(format!("{prefix}{class}{rest}"));
    }
    alts.push(n.to_string());
    format!("(?:{})", alts.join("|"))
}

/// Units of a size and their shifts, as `parse_size` reads them.
const SIZE_UNITS: [(&str, u32); 6] = [
    ("B?", 0),
    ("(?:K|KB|Ki|KiB|k)", 10),
    ("(?:M|MB|Mi|MiB)", 20),
    ("(?:G|GB|Gi|GiB)", 30),
    ("(?:T|TB|Ti|TiB)", 40),
    ("(?:P|PB|Pi|PiB)", 50),
];

/// A size without anchors: a number and a binary unit, at most [`MAX_SIZE`].
fn size_body() -> String {
    let alts: Vec<String> = SIZE_UNITS
        .iter()
        .map(|(unit, shift)| format!("{}{unit}", up_to(MAX_SIZE >> shift)))
        .collect();
    format!("(?:{})", alts.join("|"))
}

fn anchored(body: &str) -> String {
    format!("^{body}$")
}

/// Text without control characters (Unicode's Cc: U+0000 to U+001F and
/// U+007F to U+009F), the class the core refuses in IDs and labels.
const NO_CONTROL: &str = r"[^\u0000-\u001F\u007F-\u009F]";

pub static NAME: LazyLock<String> = LazyLock::new(|| "^[A-Za-z0-9][A-Za-z0-9_.-]*$".into());
pub static CLAIM_VOLUME: LazyLock<String> = LazyLock::new(|| "^[A-Za-z0-9][A-Za-z0-9_.]*$".into());
pub static SIZE: LazyLock<String> = LazyLock::new(|| anchored(&size_body()));
pub static TTL: LazyLock<String> = LazyLock::new(|| {
    let ms = u64::try_from(MAX_TTL.as_millis()).unwrap_or(u64::MAX);
    anchored(&format!(
        "(?:{}ms|{}s|{}m|{}h)",
        up_to(ms),
        up_to(ms / 1000),
        up_to(ms / 60_000),
        up_to(ms / 3_600_000)
    ))
});
pub static AUTOGROW: LazyLock<String> = LazyLock::new(|| {
    let size = size_body();
    anchored(&format!(
        r"{}%:\+(?:{}%|{size}):max={size}",
        up_to(99),
        up_to(1000)
    ))
});
pub static WATERMARK: LazyLock<String> = LazyLock::new(|| anchored(&format!("{}%?", up_to(99))));
pub static TEXT: LazyLock<String> = LazyLock::new(|| format!("^{NO_CONTROL}*$"));
pub static LABEL_KEY: LazyLock<String> =
    LazyLock::new(|| r"^[^\u0000-\u001F\u007F-\u009F=]+$".into());

/// An absolute path without `.` or `..` components or control characters.
pub static PATH: LazyLock<String> = LazyLock::new(|| {
    let c = r"\u0000-\u001F\u007F-\u009F";
    let comp = format!(r"(?:[^/.{c}][^/{c}]*|\.[^/.{c}][^/{c}]*|\.\.[^/{c}]+)");
    format!("^/+(?:{comp}(?:/+{comp})*/*)?$")
});

/// Largest overcommit ratio.
pub const MAX_RATIO: f64 = 100.0;

fn compile(p: &str) -> Regex {
    Regex::new(p).expect("the wire patterns compile")
}

static NAME_RE: LazyLock<Regex> = LazyLock::new(|| compile(&NAME));
static CLAIM_VOLUME_RE: LazyLock<Regex> = LazyLock::new(|| compile(&CLAIM_VOLUME));
static SIZE_RE: LazyLock<Regex> = LazyLock::new(|| compile(&SIZE));
static TTL_RE: LazyLock<Regex> = LazyLock::new(|| compile(&TTL));
static AUTOGROW_RE: LazyLock<Regex> = LazyLock::new(|| compile(&AUTOGROW));
static WATERMARK_RE: LazyLock<Regex> = LazyLock::new(|| compile(&WATERMARK));
static TEXT_RE: LazyLock<Regex> = LazyLock::new(|| compile(&TEXT));
static LABEL_KEY_RE: LazyLock<Regex> = LazyLock::new(|| compile(&LABEL_KEY));
static PATH_RE: LazyLock<Regex> = LazyLock::new(|| compile(&PATH));

/// What a field's text must look like, for its error message.
fn check(
    what: &str,
    value: &str,
    re: &Regex,
    max_chars: Option<usize>,
    shape: &str,
) -> Result<(), InvalidInput> {
    if max_chars.is_some_and(|m| value.chars().count() > m) {
        return Err(InvalidInput::new(
            format!("{what} {value:?}"),
            format!("is longer than {} characters", max_chars.unwrap_or(0)),
        ));
    }
    if re.is_match(value) {
        Ok(())
    } else {
        Err(InvalidInput::new(format!("{what} {value:?}"), shape))
    }
}

// Each check runs the core's parser first, so its messages stay what they
// were; the pattern then refuses what the parser alone would take (leading
// zeros, a size that overflows once rounded, `+` signs).

pub fn check_size(what: &str, v: &str) -> Result<(), InvalidInput> {
    ballast_core::model::parse_size(v).map_err(|e| match what {
        "size" => e,
        _ => InvalidInput::new(format!("{what}: {}", e.what), e.reason),
    })?;
    check(
        what,
        v,
        &SIZE_RE,
        None,
        "must be a whole number without leading zeros and an optional binary unit (B, K, M, G, T, P), for example 64M, at most 16 EiB",
    )
}

pub fn check_ttl(v: &str) -> Result<(), InvalidInput> {
    ballast_core::claims::parse_ttl(v)?;
    check(
        "ttl",
        v,
        &TTL_RE,
        None,
        "must be a whole number without leading zeros and a unit: 500ms, 2s, 5m or 1h, at most 365 days",
    )
}

pub fn check_autogrow(v: &str) -> Result<(), InvalidInput> {
    ballast_core::model::parse_autogrow(v)?;
    check(
        "autogrow",
        v,
        &AUTOGROW_RE,
        None,
        "use THRESHOLD%:+STEP:max=SIZE (threshold 1% to 99%, step 1% to 1000% or a size), for example 90%:+20%:max=10G",
    )
}

pub fn check_watermark(v: &str) -> Result<(), InvalidInput> {
    ballast_core::model::parse_watermark(v)?;
    check(
        "high watermark",
        v,
        &WATERMARK_RE,
        None,
        "must be a percentage from 1% to 99% without leading zeros, such as 80%",
    )
}

/// An ID (consumer, holder): at most [`MAX_ID_LEN`] characters, no control
/// characters.
pub fn check_text(what: &str, v: &str, max_chars: usize) -> Result<(), InvalidInput> {
    check(
        what,
        v,
        &TEXT_RE,
        Some(max_chars),
        "contains control characters",
    )
}

pub fn check_label(k: &str, v: &str) -> Result<(), InvalidInput> {
    check(
        "label key",
        k,
        &LABEL_KEY_RE,
        Some(MAX_ID_LEN),
        "must be 1 to 256 characters without '=' or control characters",
    )?;
    check_text(&format!("label {k:?} value"), v, MAX_LABEL_VALUE_LEN)
}

/// A name of the `[A-Za-z0-9][A-Za-z0-9_.-]*` kind, at most `max` long.
pub fn check_name(kind: &str, v: &str, max: usize) -> Result<(), InvalidInput> {
    // The core's rule is this pattern up to 128 characters.
    ballast_core::model::validate_name(kind, v)?;
    debug_assert!(NAME_RE.is_match(v));
    if v.chars().count() > max {
        let why = if max < MAX_NAME_LEN {
            format!(
                "is longer than {max} characters (its volumes' names GROUP-N-VOLUME must fit in {MAX_NAME_LEN})"
            )
        } else {
            format!("is longer than {max} characters")
        };
        return Err(InvalidInput::new(format!("{kind} name {v:?}"), why));
    }
    Ok(())
}

pub fn check_holder(v: &str) -> Result<(), InvalidInput> {
    if v.is_empty() {
        return Err(InvalidInput::new("holder", "must not be empty"));
    }
    check_text("holder", v, MAX_ID_LEN)
}

pub fn check_path(what: &str, v: &str) -> Result<(), InvalidInput> {
    check(
        what,
        v,
        &PATH_RE,
        None,
        "must be an absolute path without '.' or '..' components or control characters",
    )
}

pub fn check_ratio(r: f64) -> Result<(), InvalidInput> {
    if r.is_finite() && r > 0.0 && r <= MAX_RATIO {
        Ok(())
    } else {
        Err(InvalidInput::new(
            format!("overcommit ratio {r}"),
            "must be greater than 0 and at most 100",
        ))
    }
}

pub fn check_claim_volume(v: &str) -> Result<(), InvalidInput> {
    ballast_core::model::validate_name("claim volume", v)?;
    if v.contains('-') {
        return Err(InvalidInput::new(
            format!("claim volume name {v:?}"),
            "must not contain '-' (it separates GROUP-N-VOLUME); use '_' or '.'",
        ));
    }
    check(
        "claim volume name",
        v,
        &CLAIM_VOLUME_RE,
        Some(MAX_CLAIM_PART_LEN),
        "must start with a letter or digit; allowed are letters, digits, '_' and '.' ('-' separates GROUP-N-VOLUME)",
    )
}

// Schemas of the same rules, for the OpenAPI document.

fn string_type(nullable: bool) -> SchemaType {
    if nullable {
        SchemaType::from_iter([Type::String, Type::Null])
    } else {
        SchemaType::Type(Type::String)
    }
}

/// A string schema with a pattern and lengths.
pub fn string(
    pattern: &str,
    min: Option<usize>,
    max: Option<usize>,
    nullable: bool,
    description: &str,
) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(string_type(nullable))
        .pattern(Some(pattern.to_string()))
        .min_length(min)
        .max_length(max)
        .description(Some(description.to_string()))
}

pub fn name_schema(description: &str, max: usize, nullable: bool) -> ObjectBuilder {
    string(&NAME, Some(1), Some(max), nullable, description)
}

pub fn size_schema(description: &str, nullable: bool) -> ObjectBuilder {
    string(&SIZE, None, None, nullable, description)
}

fn done(b: ObjectBuilder) -> RefOr<Schema> {
    RefOr::T(Schema::Object(b.build()))
}

// `schema_with` functions of the wire types' fields.

pub fn s_volume_name() -> RefOr<Schema> {
    done(name_schema("The volume's name.", MAX_NAME_LEN, false))
}
pub fn s_snapshot_name() -> RefOr<Schema> {
    done(name_schema("The snapshot's name.", MAX_NAME_LEN, false))
}
pub fn s_pool_name() -> RefOr<Schema> {
    done(name_schema("The pool's name.", MAX_NAME_LEN, false))
}
pub fn s_opt_pool() -> RefOr<Schema> {
    done(name_schema(
        "The pool [default: default].",
        MAX_NAME_LEN,
        true,
    ))
}
pub fn s_opt_node() -> RefOr<Schema> {
    done(name_schema(
        "Place the volume on this node [default: where the controller finds room].",
        MAX_NAME_LEN,
        true,
    ))
}
pub fn s_selector() -> RefOr<Schema> {
    done(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(string(
                &LABEL_KEY,
                Some(1),
                Some(MAX_ID_LEN),
                false,
                "",
            )))
            .additional_properties(Some(string(
                &TEXT,
                None,
                Some(MAX_LABEL_VALUE_LEN),
                false,
                "",
            )))
            .description(Some(
                "Node labels the volume's node must have, all of them.",
            )),
    )
}
pub fn s_opt_spread() -> RefOr<Schema> {
    done(string(
        &LABEL_KEY,
        Some(1),
        Some(MAX_ID_LEN),
        true,
        "Spread volumes over the values of this node label (zone, rack): the value with the fewest volumes first.",
    ))
}
pub fn s_opt_snapshot() -> RefOr<Schema> {
    done(name_schema(
        "Copy the new volume from this snapshot (exclusive with from_volume).",
        MAX_NAME_LEN,
        true,
    ))
}
pub fn s_opt_volume() -> RefOr<Schema> {
    done(name_schema(
        "Copy the new volume from this volume, a clone (exclusive with from_snapshot).",
        MAX_NAME_LEN,
        true,
    ))
}
pub fn s_size() -> RefOr<Schema> {
    done(size_schema(
        "Size with an optional binary unit: `64M`, `10G`, `1073741824`.",
        false,
    ))
}
pub fn s_opt_size() -> RefOr<Schema> {
    done(size_schema(
        "Size with an optional binary unit: `64M`, `10G`, `1073741824`.",
        true,
    ))
}
pub fn s_opt_fs() -> RefOr<Schema> {
    done(
        ObjectBuilder::new()
            .schema_type(string_type(true))
            .enum_values(Some(["ext4", "xfs"]))
            .description(Some("`ext4` or `xfs` (loop pools only).")),
    )
}
pub fn s_opt_autogrow() -> RefOr<Schema> {
    done(string(
        &AUTOGROW,
        None,
        None,
        true,
        "Grow online before the filesystem fills: `THRESHOLD%:+STEP:max=SIZE`, e.g. `90%:+20%:max=10G`.",
    ))
}
pub fn s_labels() -> RefOr<Schema> {
    done(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(string(&LABEL_KEY, Some(1), Some(MAX_ID_LEN), false, "")))
            .additional_properties(Some(string(
                &TEXT,
                None,
                Some(MAX_LABEL_VALUE_LEN),
                false,
                "",
            )))
            .description(Some("Labels: keys without '=' or control characters, values without control characters.")),
    )
}
pub fn s_opt_consumer_id() -> RefOr<Schema> {
    done(string(
        &TEXT,
        None,
        Some(MAX_ID_LEN),
        true,
        "Consumer ID; omitted or empty is the one anonymous CLI consumer.",
    ))
}
pub fn s_holder() -> RefOr<Schema> {
    done(string(
        &TEXT,
        Some(1),
        Some(MAX_ID_LEN),
        false,
        "Who holds the claim; renew and release must name the same holder.",
    ))
}
pub fn s_opt_ttl() -> RefOr<Schema> {
    done(string(
        &TTL,
        None,
        None,
        true,
        "A TTL: `500ms`, `2s`, `5m`, `1h`, at most 365 days.",
    ))
}
pub fn s_claim_volumes() -> RefOr<Schema> {
    RefOr::T(Schema::Array(
        ArrayBuilder::new()
            .items(string(
                &CLAIM_VOLUME,
                Some(1),
                Some(MAX_CLAIM_PART_LEN),
                false,
                "",
            ))
            .min_items(Some(1))
            .unique_items(true)
            .description(Some(
                "The claim's volumes by short name: `data` is the volume `GROUP-N-data`. At least one, no duplicates, no `-`.",
            ))
            .build(),
    ))
}
pub fn s_opt_watermark() -> RefOr<Schema> {
    done(string(
        &WATERMARK,
        None,
        None,
        true,
        "Used space above which the pool adds capacity (or warns): `80%` [default], 1% to 99%.",
    ))
}
pub fn s_opt_driver() -> RefOr<Schema> {
    done(
        ObjectBuilder::new()
            .schema_type(string_type(true))
            .enum_values(Some(["loop", "dir", "btrfs", "rbd"]))
            .description(Some("`loop` (the default), `dir`, `btrfs` or `rbd`.")),
    )
}

pub fn s_opt_path() -> RefOr<Schema> {
    done(string(&PATH, None, None, true, "An absolute path."))
}
pub fn s_paths() -> RefOr<Schema> {
    RefOr::T(Schema::Array(
        ArrayBuilder::new()
            .items(string(&PATH, None, None, false, "An absolute path."))
            .build(),
    ))
}
pub fn s_opt_ratio() -> RefOr<Schema> {
    done(
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Number, Type::Null]))
            .exclusive_minimum(Some(0))
            .maximum(Some(MAX_RATIO))
            .description(Some(
                "Provisioned bytes may reach this multiple of the pool's capacity (for a pool that can grow: of its max size) [default: 1.0].",
            )),
    )
}

/// The `ordinal` path parameter.
pub fn ordinal_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(MAX_ORDINAL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_to_matches_exactly_one_to_n() {
        for n in [
            1u64, 2, 9, 10, 11, 19, 20, 99, 100, 101, 250, 999, 1000, 8760,
        ] {
            let re = Regex::new(&anchored(&up_to(n))).unwrap();
            for i in 0..=n + 120 {
                assert_eq!(
                    re.is_match(&i.to_string()),
                    (1..=n).contains(&i),
                    "{n}: {i}"
                );
            }
            assert!(!re.is_match(&format!("0{n}")), "{n}: leading zero");
        }
        let re = Regex::new(&anchored(&up_to(u64::MAX))).unwrap();
        assert!(re.is_match("18446744073709551615"));
        assert!(!re.is_match("18446744073709551616"));
        assert!(!re.is_match("99999999999999999999"));
    }

    #[test]
    fn every_size_the_pattern_takes_parses_and_rounds() {
        use ballast_core::model::parse_size;
        for ok in [
            "1",
            "64M",
            "10G",
            "1073741824",
            "16383P",
            "18446744073709547520",
            "1KiB",
            "7k",
        ] {
            check_size("size", ok).unwrap();
            let n = parse_size(ok).unwrap();
            assert!(n.checked_next_multiple_of(4096).is_some(), "{ok}");
        }
        for bad in [
            "",
            "0",
            "064M",
            "16384P",
            "18446744073709547521",
            "1.5G",
            "-1",
            "1g",
            "1 G",
            "1G\n",
        ] {
            assert!(check_size("size", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ttl_autogrow_watermark_follow_the_core_parsers() {
        use ballast_core::claims::parse_ttl;
        use ballast_core::model::{parse_autogrow, parse_watermark};
        for ok in ["1ms", "500ms", "2s", "5m", "8760h", "525600m", "31536000s"] {
            check_ttl(ok).unwrap();
            parse_ttl(ok).unwrap();
        }
        for bad in ["8761h", "0s", "05s", "1", "1d", "31536000001ms"] {
            assert!(check_ttl(bad).is_err(), "{bad}");
        }
        for ok in [
            "90%:+20%:max=10G",
            "1%:+1000%:max=1",
            "99%:+16383P:max=16383P",
        ] {
            check_autogrow(ok).unwrap();
            parse_autogrow(ok).unwrap();
        }
        for bad in [
            "100%:+1%:max=1G",
            "90%:+1001%:max=1G",
            "90%:20%:max=1G",
            "+9%:+1%:max=1G",
        ] {
            assert!(check_autogrow(bad).is_err(), "{bad}");
        }
        for ok in ["1", "1%", "99%"] {
            check_watermark(ok).unwrap();
            parse_watermark(ok).unwrap();
        }
        for bad in ["0", "100%", "080%", "%"] {
            assert!(check_watermark(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_and_labels() {
        check_text("id", "héllo wörld", MAX_ID_LEN).unwrap();
        check_text("id", &"é".repeat(256), MAX_ID_LEN).unwrap();
        assert!(check_text("id", &"é".repeat(257), MAX_ID_LEN).is_err());
        for bad in ["a\nb", "\u{0}", "\u{7f}", "\u{9f}"] {
            assert!(check_text("id", bad, MAX_ID_LEN).is_err(), "{bad:?}");
        }
        check_label("k", "").unwrap();
        assert!(check_label("", "v").is_err());
        assert!(check_label("a=b", "v").is_err());
    }
}

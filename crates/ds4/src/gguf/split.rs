//! Split GGUFs as llama.cpp's `gguf-split` and gguf-py's `GGUFWriter(split_max_*)` write them:
//! shard `i` of `n` is a complete GGUF file named `PREFIX-{i:05}-of-{n:05}.gguf` holding some of
//! the tensors, and every shard carries `split.no` (0-based, U16), `split.count` (U16) and
//! `split.tensors.count` (I32, tensors over all shards); the first shard holds the model's
//! metadata. This file finds the shards and merges their tables into one [`Layout`]; the
//! mapping that puts all shards into one byte range lives in `read.rs`.

use std::path::{Path, PathBuf};

use super::error::Error;
use super::parse::Layout;
use super::types::Value;

/// `split.no`: this shard's 0-based number.
pub const SPLIT_NO: &str = "split.no";
/// `split.count`: shards in all.
pub const SPLIT_COUNT: &str = "split.count";
/// `split.tensors.count`: tensors over all shards.
pub const SPLIT_TENSORS_COUNT: &str = "split.tensors.count";

/// A shard's split keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SplitKeys {
    pub no: u64,
    pub count: u64,
    pub tensors: u64,
}

fn key_u64(layout: &Layout, key: &str) -> Option<Result<u64, String>> {
    let &i = layout.key_index.get(key)?;
    let v: &Value = &layout.metadata.get(i)?.1;
    Some(
        v.as_int()
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| format!("{key} is {v:?}, expected a non-negative integer")),
    )
}

/// The split keys of a parsed file: `None` when it is not split (no `split.count`, or 1).
pub(crate) fn keys(layout: &Layout, path: &Path) -> Result<Option<SplitKeys>, Error> {
    let bad = |problem: String| Error::ShardMismatch {
        path: path.to_owned(),
        problem,
    };
    let Some(count) = key_u64(layout, SPLIT_COUNT) else {
        return Ok(None);
    };
    let count = count.map_err(bad)?;
    if count <= 1 {
        return Ok(None);
    }
    let no = key_u64(layout, SPLIT_NO)
        .unwrap_or_else(|| Err(format!("{SPLIT_COUNT} = {count} but {SPLIT_NO} is missing")))
        .map_err(bad)?;
    let tensors = key_u64(layout, SPLIT_TENSORS_COUNT)
        .unwrap_or_else(|| Err(format!("{SPLIT_TENSORS_COUNT} is missing")))
        .map_err(bad)?;
    Ok(Some(SplitKeys { no, count, tensors }))
}

/// The paths of all `count` shards, given the first one's (`PREFIX-00001-of-NNNNN.gguf`).
pub(crate) fn shard_paths(first: &Path, count: u64) -> Result<Vec<PathBuf>, Error> {
    let name_err = || Error::SplitName {
        path: first.to_owned(),
        count,
    };
    let name = first
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(name_err)?;
    let suffix = format!("-00001-of-{count:05}.gguf");
    let prefix = name.strip_suffix(&suffix).ok_or_else(name_err)?;
    Ok((1..=count)
        .map(|i| first.with_file_name(format!("{prefix}-{i:05}-of-{count:05}.gguf")))
        .collect())
}

/// Merges the shards' layouts (each parsed on its own bytes) into one, with every tensor offset
/// moved by its shard's start `base[i]` in the combined byte range. Checks that shard `i`
/// says `split.no = i` and the first shard's count, and that the tensors add up.
pub(crate) fn merge(
    shards: Vec<(PathBuf, Layout)>,
    base: &[u64],
    first: SplitKeys,
) -> Result<Layout, Error> {
    let mut merged: Option<Layout> = None;
    for (i, ((path, layout), &off)) in shards.into_iter().zip(base).enumerate() {
        let mismatch = |problem: String| Error::ShardMismatch {
            path: path.clone(),
            problem,
        };
        let k =
            keys(&layout, &path)?.ok_or_else(|| mismatch(format!("has no {SPLIT_COUNT} > 1")))?;
        if k.no != i as u64 || k.count != first.count {
            return Err(mismatch(format!(
                "says it is shard {} of {}, expected shard {} of {}",
                k.no + 1,
                k.count,
                i + 1,
                first.count
            )));
        }
        if k.tensors != first.tensors {
            return Err(mismatch(format!(
                "{SPLIT_TENSORS_COUNT} is {}, the first shard says {}",
                k.tensors, first.tensors
            )));
        }
        let mut tensors = layout.tensors;
        for t in &mut tensors {
            t.offset = t
                .offset
                .checked_add(off)
                .ok_or_else(|| mismatch("tensor offset overflows".into()))?;
        }
        match &mut merged {
            None => {
                merged = Some(Layout {
                    tensors: Vec::new(),
                    tensor_index: Default::default(),
                    ..layout
                });
                let m = merged.as_mut().expect("just set");
                add_tensors(m, tensors)?;
            }
            Some(m) => add_tensors(m, tensors)?,
        }
    }
    let m = merged.ok_or_else(|| Error::ShardMismatch {
        path: PathBuf::new(),
        problem: "no shards".into(),
    })?;
    if m.tensors.len() as u64 != first.tensors {
        return Err(Error::ShardMismatch {
            path: PathBuf::from("(all shards)"),
            problem: format!(
                "{} tensors in all, {SPLIT_TENSORS_COUNT} says {}",
                m.tensors.len(),
                first.tensors
            ),
        });
    }
    Ok(m)
}

fn add_tensors(m: &mut Layout, tensors: Vec<super::parse::TensorInfo>) -> Result<(), Error> {
    for t in tensors {
        if m.tensor_index
            .insert(t.name.clone(), m.tensors.len())
            .is_some()
        {
            return Err(Error::DuplicateTensor { name: t.name });
        }
        m.tensors.push(t);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_paths_follow_gguf_split_naming() {
        let p = shard_paths(Path::new("/m/DeepSeek-V4-Q8_0-00001-of-00003.gguf"), 3).unwrap();
        assert_eq!(
            p,
            [
                "/m/DeepSeek-V4-Q8_0-00001-of-00003.gguf",
                "/m/DeepSeek-V4-Q8_0-00002-of-00003.gguf",
                "/m/DeepSeek-V4-Q8_0-00003-of-00003.gguf"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn shard_paths_reject_a_name_without_the_split_suffix() {
        for name in [
            "/m/model.gguf",
            "/m/x-00002-of-00003.gguf",
            "/m/x-00001-of-00004.gguf",
        ] {
            let err = shard_paths(Path::new(name), 3).unwrap_err();
            assert!(
                matches!(err, Error::SplitName { count: 3, .. }),
                "{name}: {err}"
            );
            assert!(
                err.to_string().contains("PREFIX-00001-of-00003.gguf"),
                "{err}"
            );
        }
    }
}

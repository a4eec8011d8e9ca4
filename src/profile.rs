//! Profiles of the whole cluster: the driver's and every machine's, merged into one pprof
//! profile with one string, function, location and mapping table, each sample labelled with
//! its `machine` (`driver` for the driver's own). The standard tools read it:
//!
//! ```text
//! go tool pprof -top profile.pb.gz                 # the whole cluster as one program
//! go tool pprof -tagfocus=machine=127.0.0.1:4433 -top profile.pb.gz   # one machine
//! go tool pprof -tagroot=machine -http=: profile.pb.gz                # per machine, in a browser
//! ```
//!
//! CPU profiles come from pprof-rs in every process (see [`cpu`]); heap profiles from the
//! heap profiler a program installs with [`set_heap_profiler`] (none by default: the answer
//! then says so).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use bigmachine_core::{Error, Kind, Machine, Result, State, B};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use pprof::protos::{Function, Label, Line, Location, Mapping, Message, Profile, ValueType};

pub use bigmachine_supervisor::{set_heap_profiler, HeapProfiler, MAX_CPU_PROFILE};
/// pprof's protobuf messages ([`protos::Profile`] and its parts), as [`decode`] returns them.
pub use pprof::protos;

use crate::metrics::DRIVER;

/// The largest profile accepted from a machine, once decompressed.
const MAX_PROFILE_BYTES: u64 = 256 << 20;

/// Which processes a cluster profile covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The driver and every running machine.
    Cluster,
    /// The machine at this address alone.
    Machine(SocketAddr),
}

/// A CPU profile over `duration` of the driver and every running machine (or of one machine),
/// merged, gzip-compressed: what `/debug/bigmachine/pprof/profile?seconds=N` serves. Machines
/// that fail are left out, and a comment of the profile names them. All processes profile at
/// once. A process has one profiler: machines of the test system share their driver's
/// process, so in a cluster profile they are left out (the driver profiles that process);
/// [`Scope::Machine`] profiles one of them. One cluster profile is taken at a time (a second
/// is refused with a temporary [`Kind::Unavailable`]).
pub async fn cpu(b: &B, duration: Duration, scope: Scope) -> Result<Vec<u8>> {
    if duration.is_zero() || duration > MAX_CPU_PROFILE {
        return Err(Error::fatal(
            Kind::Invalid,
            format!("a CPU profile lasts from 1 ms to {MAX_CPU_PROFILE:?}, not {duration:?}"),
        ));
    }
    // One cluster profile at a time: each takes every machine's one profiler.
    static TAKING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = TAKING.try_lock().map_err(|_| {
        Error::temporary(
            Kind::Unavailable,
            "a CPU profile of the cluster is being taken",
        )
    })?;
    let own = bigmachine_supervisor::cpu_profile(duration);
    gather(
        b,
        scope,
        own,
        |m| async move { m.cpu_profile(duration).await },
    )
    .await
}

/// A heap profile of the driver and every running machine (or of one machine), merged,
/// gzip-compressed: what `/debug/bigmachine/pprof/heap` serves. Without a heap profiler
/// installed ([`set_heap_profiler`]) it fails with [`Kind::NotSupported`], saying so.
pub async fn heap(b: &B, scope: Scope) -> Result<Vec<u8>> {
    let own = bigmachine_supervisor::heap_profile();
    gather(b, scope, own, |m| async move { m.heap_profile().await }).await
}

/// Takes the driver's own profile (`own`, for the whole cluster) and asks the machines of
/// `scope` for theirs (`ask`), all at once, then merges them.
async fn gather<O, F, Fut>(b: &B, scope: Scope, own: O, ask: F) -> Result<Vec<u8>>
where
    O: std::future::Future<Output = Result<Vec<u8>>>,
    F: Fn(Machine) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>>>,
{
    let machines: Vec<Machine> = b
        .machines()
        .into_iter()
        .filter(|m| match scope {
            Scope::Cluster => m.state() == State::Running,
            Scope::Machine(addr) => m.addr() == addr,
        })
        .collect();
    if let (Scope::Machine(addr), true) = (scope, machines.is_empty()) {
        return Err(Error::fatal(
            Kind::Invalid,
            format!("no machine at {addr} in this cluster"),
        ));
    }
    let own = async {
        match scope {
            Scope::Machine(_) => None,
            Scope::Cluster => Some(own.await),
        }
    };
    let asked = machines.iter().map(|m| {
        let answer = ask(m.clone());
        async move { (m.addr().to_string(), answer.await) }
    });
    let (own, answers) = tokio::join!(own, futures::future::join_all(asked));
    let answers = own
        .map(|own| (DRIVER.to_string(), own))
        .into_iter()
        .chain(answers);
    let mut merger = Merger::default();
    let mut failed = Vec::new();
    let mut first_error = None;
    for (machine, answer) in answers {
        match answer.and_then(|bytes| decode(&bytes)) {
            Ok(profile) => {
                if let Err(e) = merger.add(&machine, &profile) {
                    failed.push(format!("{machine}: {e}"));
                }
            }
            Err(e) => {
                tracing::debug!(%machine, error = %e, "profile left out");
                failed.push(format!("{machine}: {e}"));
                first_error.get_or_insert(e);
            }
        }
    }
    if merger.sources == 0 {
        return Err(first_error.unwrap_or_else(|| Error::new(Kind::Unavailable, "no profiles")));
    }
    for f in failed {
        merger.comment(&format!("left out: {f}"));
    }
    gzip(&merger.finish().encode_to_vec())
}

/// A profile from pprof's protobuf, gzip-compressed or not.
pub fn decode(bytes: &[u8]) -> Result<Profile> {
    let invalid = |e: &dyn std::fmt::Display| {
        Error::fatal(Kind::Invalid, format!("not a pprof profile: {e}"))
    };
    let raw;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(bytes)
            .take(MAX_PROFILE_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| invalid(&e))?;
        if out.len() as u64 > MAX_PROFILE_BYTES {
            return Err(invalid(&format!("over {MAX_PROFILE_BYTES} bytes")));
        }
        raw = out;
        &raw[..]
    } else if bytes.len() as u64 > MAX_PROFILE_BYTES {
        return Err(invalid(&format!("over {MAX_PROFILE_BYTES} bytes")));
    } else {
        bytes
    };
    Profile::decode(bytes).map_err(|e| invalid(&e))
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes)?;
    Ok(e.finish()?)
}

/// What makes two locations one: mapping, address, lines (function and line) and folding.
type LocationKey = (u64, u64, Vec<(u64, i64)>, bool);

/// Profiles merged into one: every input's strings, mappings, functions and locations
/// re-interned into one table each, its samples relabelled with their machine.
#[derive(Debug, Default)]
pub struct Merger {
    out: Profile,
    strings: HashMap<String, i64>,
    mappings: HashMap<(u64, u64, u64, i64, i64), u64>,
    functions: HashMap<(i64, i64, i64, i64), u64>,
    locations: HashMap<LocationKey, u64>,
    sources: usize,
}

impl Merger {
    /// The index of `s` in the merged string table.
    fn string(&mut self, s: &str) -> i64 {
        if self.out.string_table.is_empty() {
            self.out.string_table.push(String::new());
            self.strings.insert(String::new(), 0);
        }
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.out.string_table.len() as i64;
        self.out.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    fn comment(&mut self, text: &str) {
        let i = self.string(text);
        self.out.comment.push(i);
    }

    /// The name of `p`'s value type `v` as (type, unit) strings.
    fn value_type(p: &Profile, v: &ValueType) -> Result<(String, String)> {
        Ok((text(p, v.ty)?.to_string(), text(p, v.unit)?.to_string()))
    }

    /// Adds the profile of `machine`. Its sample types must be those of the profiles added
    /// before it.
    pub fn add(&mut self, machine: &str, p: &Profile) -> Result<()> {
        // Read and checked first; the output changes only once the whole profile is read (its
        // tables may gain entries nothing refers to).
        let types = p
            .sample_type
            .iter()
            .map(|v| Self::value_type(p, v))
            .collect::<Result<Vec<_>>>()?;
        if self.sources > 0 {
            let ours = self
                .out
                .sample_type
                .iter()
                .map(|v| Self::value_type(&self.out, v))
                .collect::<Result<Vec<_>>>()?;
            if ours != types {
                return Err(Error::fatal(
                    Kind::Invalid,
                    format!("sample types {types:?} differ from the others' {ours:?}"),
                ));
            }
        }
        let period_type = p
            .period_type
            .as_ref()
            .map(|v| Self::value_type(p, v))
            .transpose()?;
        let default_sample_type = text(p, p.default_sample_type)?.to_string();
        let mut mappings = HashMap::new();
        for m in &p.mapping {
            let key = (
                m.memory_start,
                m.memory_limit,
                m.file_offset,
                self.string(text(p, m.filename)?),
                self.string(text(p, m.build_id)?),
            );
            let next = self.out.mapping.len() as u64 + 1;
            let id = *self.mappings.entry(key).or_insert_with(|| {
                self.out.mapping.push(Mapping {
                    id: next,
                    memory_start: key.0,
                    memory_limit: key.1,
                    file_offset: key.2,
                    filename: key.3,
                    build_id: key.4,
                    ..m.clone()
                });
                next
            });
            mappings.insert(m.id, id);
        }
        let mut functions = HashMap::new();
        for f in &p.function {
            let key = (
                self.string(text(p, f.name)?),
                self.string(text(p, f.system_name)?),
                self.string(text(p, f.filename)?),
                f.start_line,
            );
            let next = self.out.function.len() as u64 + 1;
            let id = *self.functions.entry(key).or_insert_with(|| {
                self.out.function.push(Function {
                    id: next,
                    name: key.0,
                    system_name: key.1,
                    filename: key.2,
                    start_line: key.3,
                });
                next
            });
            functions.insert(f.id, id);
        }
        let mut locations = HashMap::new();
        for l in &p.location {
            let mapping_id = match l.mapping_id {
                0 => 0,
                id => *mappings.get(&id).ok_or_else(|| missing("mapping", id))?,
            };
            let lines = l
                .line
                .iter()
                .map(|line| {
                    let f = functions
                        .get(&line.function_id)
                        .ok_or_else(|| missing("function", line.function_id))?;
                    Ok((*f, line.line))
                })
                .collect::<Result<Vec<_>>>()?;
            let key = (mapping_id, l.address, lines, l.is_folded);
            let next = self.out.location.len() as u64 + 1;
            let id = match self.locations.get(&key) {
                Some(&id) => id,
                None => {
                    self.out.location.push(Location {
                        id: next,
                        mapping_id,
                        address: l.address,
                        line: key
                            .2
                            .iter()
                            .map(|&(function_id, line)| Line { function_id, line })
                            .collect(),
                        is_folded: l.is_folded,
                    });
                    self.locations.insert(key, next);
                    next
                }
            };
            locations.insert(l.id, id);
        }
        let machine_key = self.string("machine");
        let machine_value = self.string(machine);
        // Added only once all are read: a bad input adds no sample.
        let mut samples = Vec::with_capacity(p.sample.len());
        for s in &p.sample {
            if s.value.len() != types.len() {
                return Err(Error::fatal(
                    Kind::Invalid,
                    format!(
                        "a sample of {} values in a profile of {} sample types",
                        s.value.len(),
                        types.len()
                    ),
                ));
            }
            let location_id = s
                .location_id
                .iter()
                .map(|id| {
                    locations
                        .get(id)
                        .copied()
                        .ok_or_else(|| missing("location", *id))
                })
                .collect::<Result<Vec<_>>>()?;
            let mut label = Vec::with_capacity(s.label.len() + 1);
            for l in &s.label {
                label.push(Label {
                    key: self.string(text(p, l.key)?),
                    str: self.string(text(p, l.str)?),
                    num: l.num,
                    num_unit: self.string(text(p, l.num_unit)?),
                });
            }
            label.push(Label {
                key: machine_key,
                str: machine_value,
                ..Label::default()
            });
            samples.push(pprof::protos::Sample {
                location_id,
                value: s.value.clone(),
                label,
            });
        }
        let comments = p
            .comment
            .iter()
            .map(|&c| text(p, c).map(str::to_string))
            .collect::<Result<Vec<_>>>()?;
        // The whole profile is read: it joins the output.
        if self.sources == 0 {
            self.out.sample_type = types
                .iter()
                .map(|(ty, unit)| ValueType {
                    ty: self.string(ty),
                    unit: self.string(unit),
                })
                .collect();
            self.out.period_type = period_type.map(|(ty, unit)| ValueType {
                ty: self.string(&ty),
                unit: self.string(&unit),
            });
            self.out.period = p.period;
            self.out.time_nanos = p.time_nanos;
            self.out.default_sample_type = self.string(&default_sample_type);
        } else if p.time_nanos != 0 {
            self.out.time_nanos = self.out.time_nanos.min(p.time_nanos);
        }
        self.out.duration_nanos = self.out.duration_nanos.max(p.duration_nanos);
        self.out.sample.extend(samples);
        for c in comments {
            let c = self.string(&c);
            self.out.comment.push(c);
        }
        self.sources += 1;
        Ok(())
    }

    /// The merged profile.
    pub fn finish(mut self) -> Profile {
        self.string("");
        self.out
    }
}

/// The string `i` of `p`'s table.
fn text(p: &Profile, i: i64) -> Result<&str> {
    usize::try_from(i)
        .ok()
        .and_then(|i| p.string_table.get(i))
        .map(String::as_str)
        .ok_or_else(|| {
            Error::fatal(
                Kind::Invalid,
                format!("profile string {i} out of its table"),
            )
        })
}

fn missing(what: &str, id: u64) -> Error {
    Error::fatal(
        Kind::Invalid,
        format!("profile refers to {what} {id}, which it lacks"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pprof::protos::Sample;

    /// A profile of one sample whose stack is `names` (leaf first).
    fn profile(names: &[&str]) -> Profile {
        let mut p = Profile {
            string_table: vec!["".into(), "samples".into(), "count".into(), "thread".into()],
            ..Profile::default()
        };
        p.sample_type = vec![ValueType { ty: 1, unit: 2 }];
        let mut location_id = Vec::new();
        for (i, name) in names.iter().enumerate() {
            p.string_table.push(name.to_string());
            let id = i as u64 + 7; // ids of the input are not those of the output
            p.function.push(Function {
                id,
                name: p.string_table.len() as i64 - 1,
                ..Function::default()
            });
            p.location.push(Location {
                id,
                line: vec![Line {
                    function_id: id,
                    line: 1,
                }],
                ..Location::default()
            });
            location_id.push(id);
        }
        p.sample.push(Sample {
            location_id,
            value: vec![3],
            label: vec![Label {
                key: 3,
                str: 4,
                ..Label::default()
            }],
        });
        p
    }

    fn names(p: &Profile, s: &Sample) -> Vec<String> {
        s.location_id
            .iter()
            .map(|id| {
                let l = &p.location[*id as usize - 1];
                let f = &p.function[l.line[0].function_id as usize - 1];
                p.string_table[f.name as usize].clone()
            })
            .collect()
    }

    fn label(p: &Profile, s: &Sample, key: &str) -> Option<String> {
        s.label
            .iter()
            .find(|l| p.string_table[l.key as usize] == key)
            .map(|l| p.string_table[l.str as usize].clone())
    }

    #[test]
    fn profiles_merge_into_one_table_each_with_machine_labels() -> Result<()> {
        let mut m = Merger::default();
        m.add("a", &profile(&["leaf", "main"]))?;
        m.add("b", &profile(&["other", "main"]))?;
        let p = decode(&m.finish().encode_to_vec())?;
        // "main" once in functions and locations; three functions in all.
        assert_eq!(p.function.len(), 3);
        assert_eq!(p.location.len(), 3);
        let count = |s: &str| p.string_table.iter().filter(|t| *t == s).count();
        assert_eq!((count("main"), count("machine"), count("")), (1, 1, 1));
        assert_eq!(p.string_table[0], "");
        assert_eq!(names(&p, &p.sample[0]), ["leaf", "main"]);
        assert_eq!(names(&p, &p.sample[1]), ["other", "main"]);
        assert_eq!(label(&p, &p.sample[0], "machine").as_deref(), Some("a"));
        assert_eq!(label(&p, &p.sample[1], "machine").as_deref(), Some("b"));
        // The input's own labels are kept (a thread name, here the function's name).
        assert_eq!(label(&p, &p.sample[1], "thread").as_deref(), Some("other"));
        Ok(())
    }

    #[test]
    fn a_refused_profile_adds_nothing() -> Result<()> {
        let mut m = Merger::default();
        m.add("a", &profile(&["x"]))?;
        let mut bad = profile(&["y"]);
        bad.comment.push(1000);
        assert!(m.add("b", &bad).is_err());
        let p = m.finish();
        assert_eq!((p.sample.len(), p.comment.len()), (1, 0));
        Ok(())
    }

    #[test]
    fn a_profile_of_other_sample_types_is_refused() -> Result<()> {
        let mut m = Merger::default();
        m.add("a", &profile(&["x"]))?;
        let mut other = profile(&["y"]);
        other.string_table[2] = "bytes".into();
        assert!(m.add("b", &other).is_err());
        Ok(())
    }

    #[test]
    fn bad_references_are_errors_not_panics() {
        let mut p = profile(&["x"]);
        p.sample[0].location_id.push(99);
        assert!(Merger::default().add("a", &p).is_err());
        let mut p = profile(&["x"]);
        p.sample[0].value.push(1);
        assert!(Merger::default().add("a", &p).is_err());
        let mut p = profile(&["x"]);
        p.function[0].name = 1000;
        assert!(Merger::default().add("a", &p).is_err());
        assert!(decode(b"\x1f\x8bnot gzip").is_err());
    }

    #[test]
    fn gzip_and_raw_profiles_decode_alike() -> Result<()> {
        let raw = profile(&["x"]).encode_to_vec();
        assert_eq!(decode(&gzip(&raw)?)?, decode(&raw)?);
        Ok(())
    }
}

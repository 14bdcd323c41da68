//! Warm and cold segments: immutable Parquet files (zstd) of stored lines, sorted by
//! stream and time, with the statistics the planner prunes by.
//!
//! A segment holds the columns `id` (the hot tier's row id, which orders lines with
//! equal timestamps the same way in every tier), `stream_id`, `ts` (ns), `observed`,
//! `level`, `template_id`, `flags`, `line` (UTF-8 text; invalid bytes replaced),
//! `line_raw` (the exact bytes, only for lines that are not valid UTF-8) and `labels`
//! (the stream's labels as JSON, dictionary-encoded, so a segment explains itself to
//! any Parquet engine and the catalog can be rebuilt from the files). The footer's
//! key-value metadata `heimdall.segment` repeats the segment's statistics.
//!
//! Each row group, and the segment as a whole, has a needle filter
//! ([`crate::filter`]): whether it may hold a line containing a given substring, for
//! `|=` filters, without reading it. Filters live in the catalog, not in the file.

use crate::columnar::{Rebuilt, TemplateView, Verdict};
use crate::filter::{Bloom, GramBuilder};
use heimdall_common::record::{Labels, Level};
use parquet::basic::{Compression, ZstdLevel};
use parquet::column::reader::{get_typed_column_reader, ColumnReader};
use parquet::column::writer::ColumnWriter;
use parquet::data_type::{ByteArray, DataType, Int32Type, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::statistics::Statistics;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Segment failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the file failed.
    #[error("segment {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The Parquet library refused the file.
    #[error("segment {path}: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// The file does not hold what the catalog says it holds.
    #[error("segment {path} failed verification: {what}")]
    Corrupt { path: PathBuf, what: String },
}

const SCHEMA: &str = "
message heimdall_segment {
    required int64 id;
    required int64 stream_id;
    required int64 ts (TIMESTAMP(NANOS, true));
    required int64 observed (TIMESTAMP(NANOS, true));
    required int32 level;
    required int64 template_id;
    required int32 flags;
    optional binary line (STRING);
    optional binary line_raw;
    required binary labels (STRING);
    optional binary metadata (JSON);
    optional binary template_block;
}";

const COL_ID: usize = 0;
const COL_STREAM: usize = 1;
const COL_TS: usize = 2;
const COL_OBSERVED: usize = 3;
const COL_LEVEL: usize = 4;
const COL_TEMPLATE: usize = 5;
const COL_FLAGS: usize = 6;
const COL_LINE: usize = 7;
const COL_RAW: usize = 8;
const COL_LABELS: usize = 9;
/// Structured metadata as a JSON object of strings; null for lines without. Segments
/// written before it existed have ten columns.
const COL_META: usize = 10;
/// The row group's template-columnar block ([`crate::columnar`]), on its first row;
/// null on every other row. Rows it rebuilds have a null `line`. Segments written
/// before it existed have eleven columns and a `line` on every row.
const COL_BLOCK: usize = 11;

/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS: usize = 16_384;
/// Footer key of the segment's statistics.
pub const META_KEY: &str = "heimdall.segment";

/// One stored line, as a segment holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRow {
    pub id: i64,
    pub stream_id: i64,
    pub ts: i64,
    pub observed: i64,
    pub level: Level,
    pub template_id: u64,
    pub flags: u8,
    pub line: Vec<u8>,
    /// Structured metadata (empty for most lines).
    pub metadata: Labels,
}

/// One stored line borrowed from a reader ([`SegmentFile::visit`], the hot tier's
/// sections): no copy of the line is made until a caller keeps it.
#[derive(Clone, Debug)]
pub struct RowRef<'a> {
    pub id: i64,
    pub stream_id: i64,
    pub ts: i64,
    pub observed: i64,
    pub level: Level,
    pub template_id: u64,
    pub flags: u8,
    pub line: &'a [u8],
    /// Known to pass the reader's prefilter without its line being rebuilt (see
    /// [`Selection::prefilter`]); `line` is then empty.
    pub passes: bool,
    /// Structured metadata (empty for most lines).
    pub metadata: Labels,
}

impl RowRef<'_> {
    /// The row, owned.
    pub fn into_row(self) -> SegmentRow {
        SegmentRow {
            id: self.id,
            stream_id: self.stream_id,
            ts: self.ts,
            observed: self.observed,
            level: self.level,
            template_id: self.template_id,
            flags: self.flags,
            line: self.line.to_vec(),
            metadata: self.metadata,
        }
    }
}

/// The columns [`SegmentFile::visit`] reads beyond stream, time, level, flags and
/// metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Columns {
    /// The line (its column, the exact bytes and the template block).
    pub line: bool,
    /// The row id, observed time and template id.
    pub extra: bool,
    /// Rows may come in any order (templated lines are then rebuilt template by
    /// template, which reads each column front to back: faster).
    pub any_order: bool,
}

impl Columns {
    /// Every column, rows in file order.
    pub const ALL: Columns = Columns {
        line: true,
        extra: true,
        any_order: false,
    };
}

/// Rows and time range of one stream in a segment.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamRange {
    pub stream_id: i64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub rows: u64,
}

/// What a finished segment holds.
#[derive(Clone, Debug)]
pub struct SegmentInfo {
    pub rows: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    /// Bit `n` set when a line of level `n` is present.
    pub levels: u8,
    pub streams: Vec<StreamRange>,
    /// File size.
    pub bytes: u64,
    /// Line bytes before compression.
    pub raw_bytes: u64,
    /// CRC-32C of the whole file.
    pub checksum: u32,
    /// A hash over every row in order, to compare a read-back with what was written.
    pub content_hash: u64,
    pub bloom: Bloom,
    /// The same filter for each row group, in file order: a needle search reads only
    /// the row groups whose filter passes.
    pub row_group_blooms: Vec<Bloom>,
}

/// The footer metadata (JSON).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct FooterMeta {
    pub version: u32,
    pub rows: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub content_hash: u64,
    pub streams: Vec<StreamRange>,
}

/// FNV-1a over `bytes` with a tag, then fmix64 (FNV's low bits are weak for short
/// keys): the content hash of segments of footer version 1, and the token filters
/// written before gram filters.
pub(crate) fn tagged_hash(tag: u8, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(tag);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // fmix64: FNV's low bits are weak for short keys.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn pq(path: &Path) -> impl FnOnce(parquet::errors::ParquetError) -> Error + '_ {
    move |source| Error::Parquet {
        path: path.to_owned(),
        source,
    }
}

/// The footer version this code writes: 2 has the template block and hashes lines
/// with [`line_hash`] for the content hash; 1 hashed them byte by byte (FNV).
const VERSION: u32 = 2;

/// A 64-bit hash of a line for the content hash, eight bytes a step.
fn line_hash(b: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (b.len() as u64).wrapping_mul(K);
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ v).wrapping_mul(K).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    let rest = chunks.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    h ^= h >> 32;
    h.wrapping_mul(0xff51_afd7_ed55_8ccd) ^ (h >> 29)
}

/// Mixes a row into a segment's content hash, as footer `version` defines it.
fn row_hash(h: &mut u64, r: &SegmentRow, version: u32) {
    let mut mix = |x: u64| {
        *h ^= x;
        *h = h.wrapping_mul(0x0000_0100_0000_01b3).rotate_left(17);
    };
    mix(r.id as u64);
    mix(r.stream_id as u64);
    mix(r.ts as u64);
    mix(r.observed as u64);
    mix(r.level as u64);
    mix(r.template_id);
    mix(u64::from(r.flags));
    mix(if version >= 2 {
        line_hash(&r.line)
    } else {
        tagged_hash(2, &r.line)
    });
    if !r.metadata.is_empty() {
        mix(tagged_hash(
            3,
            super::hot::labels_key(&r.metadata).as_bytes(),
        ));
    }
}

/// Writes one segment. Rows must come sorted by (stream, ts, id).
pub struct SegmentWriter {
    path: PathBuf,
    writer: Option<SerializedFileWriter<BufWriter<File>>>,
    /// Each stream's labels, one shared buffer for every row of the labels column.
    label_bytes: HashMap<i64, bytes::Bytes>,
    buf: Vec<SegmentRow>,
    streams: Vec<StreamRange>,
    rows: u64,
    min_ts: i64,
    max_ts: i64,
    levels: u8,
    raw_bytes: u64,
    content_hash: u64,
    grams: GramBuilder,
    /// Entries of the row group being filled.
    rg_grams: GramBuilder,
    rg_blooms: Vec<Bloom>,
    /// Lines stored template-columnar ([`crate::columnar`]); otherwise every line is
    /// in the `line` column (what [`export`] writes for other engines).
    columnar: bool,
}

impl SegmentWriter {
    /// Creates the file at `path`; `labels` names every stream the rows may have.
    ///
    /// # Errors
    /// [`Error`].
    pub fn create(
        path: &Path,
        labels: HashMap<i64, String>,
        zstd_level: i32,
    ) -> Result<SegmentWriter, Error> {
        let schema = Arc::new(parse_message_type(SCHEMA).map_err(pq(path))?);
        // Integers sorted by stream and time have small deltas; lines of one stream
        // share prefixes; labels, levels and flags repeat: encode each accordingly
        // before zstd.
        let col = |c: &str| parquet::schema::types::ColumnPath::from(c);
        let mut props = WriterProperties::builder().set_dictionary_enabled(false);
        for c in ["id", "stream_id", "ts", "observed", "template_id"] {
            props =
                props.set_column_encoding(col(c), parquet::basic::Encoding::DELTA_BINARY_PACKED);
        }
        for c in ["labels", "level", "flags"] {
            props = props.set_column_dictionary_enabled(col(c), true);
        }
        let props = props
            .set_column_encoding(col("line"), parquet::basic::Encoding::DELTA_BYTE_ARRAY)
            // Statistics of the block would copy it into the footer.
            .set_column_statistics_enabled(col("template_block"), EnabledStatistics::None)
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(zstd_level).map_err(pq(path))?,
            ))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_created_by(format!("heimdall {}", env!("CARGO_PKG_VERSION")))
            .build();
        let file = File::create(path).map_err(io(path))?;
        let writer = SerializedFileWriter::new(
            BufWriter::with_capacity(1 << 20, file),
            schema,
            Arc::new(props),
        )
        .map_err(pq(path))?;
        Ok(SegmentWriter {
            path: path.to_owned(),
            writer: Some(writer),
            label_bytes: labels
                .into_iter()
                .map(|(id, l)| (id, bytes::Bytes::from(l.into_bytes())))
                .collect(),
            buf: Vec::with_capacity(ROW_GROUP_ROWS),
            streams: Vec::new(),
            rows: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            levels: 0,
            raw_bytes: 0,
            content_hash: 0xcbf2_9ce4_8422_2325,
            grams: GramBuilder::largest(),
            rg_grams: GramBuilder::largest(),
            rg_blooms: Vec::new(),
            columnar: true,
        })
    }

    /// Like [`SegmentWriter::create`], with every line whole in the `line` column.
    ///
    /// # Errors
    /// [`Error`].
    pub fn create_plain(
        path: &Path,
        labels: HashMap<i64, String>,
        zstd_level: i32,
    ) -> Result<SegmentWriter, Error> {
        let mut w = SegmentWriter::create(path, labels, zstd_level)?;
        w.columnar = false;
        Ok(w)
    }

    /// Pushes the rows of `file` (whose footer is `footer`) that `keep` accepts, in
    /// file order; returns how many.
    ///
    /// # Errors
    /// [`Error`] from reading or writing.
    pub fn copy_from(
        &mut self,
        file: &SegmentFile,
        footer: &FooterMeta,
        mut keep: impl FnMut(&SegmentRow) -> bool,
    ) -> Result<u64, Error> {
        let mut kept = 0u64;
        let mut failed = None;
        file.read_all(footer, |r| {
            if !keep(&r) {
                return true;
            }
            kept += 1;
            match self.push(r) {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })?;
        match failed {
            Some(e) => Err(e),
            None => Ok(kept),
        }
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Adds a row.
    ///
    /// # Errors
    /// [`Error`].
    pub fn push(&mut self, row: SegmentRow) -> Result<(), Error> {
        match self.streams.last_mut() {
            Some(s) if s.stream_id == row.stream_id => {
                s.min_ts = s.min_ts.min(row.ts);
                s.max_ts = s.max_ts.max(row.ts);
                s.rows += 1;
            }
            _ => self.streams.push(StreamRange {
                stream_id: row.stream_id,
                min_ts: row.ts,
                max_ts: row.ts,
                rows: 1,
            }),
        }
        self.rows += 1;
        self.min_ts = self.min_ts.min(row.ts);
        self.max_ts = self.max_ts.max(row.ts);
        self.levels |= 1 << (row.level as u8);
        self.raw_bytes += row.line.len() as u64;
        row_hash(&mut self.content_hash, &row, VERSION);
        self.rg_grams.add_line(&row.line);
        self.buf.push(row);
        if self.buf.len() >= ROW_GROUP_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.rg_blooms.push(self.rg_grams.finish());
        self.grams.union(&self.rg_grams);
        self.rg_grams.clear();
        let path = self.path.clone();
        let mut rows = std::mem::take(&mut self.buf);
        // Lines the block rebuilds leave the `line` column null; the others are kept
        // whole there (and in `line_raw` when they are not valid UTF-8).
        let (templated, mut block) = if self.columnar {
            crate::columnar::encode(rows.iter().map(|r| &r.line[..]))
        } else {
            (vec![false; rows.len()], Vec::new())
        };
        let w = self.writer.as_mut().expect("open until finish");
        let mut rg = w.next_row_group().map_err(pq(&path))?;
        let mut col = 0;
        while let Some(mut c) = rg.next_column().map_err(pq(&path))? {
            let res = match (col, c.untyped()) {
                (
                    COL_ID | COL_STREAM | COL_TS | COL_OBSERVED | COL_TEMPLATE,
                    ColumnWriter::Int64ColumnWriter(w),
                ) => {
                    let v: Vec<i64> = rows
                        .iter()
                        .map(|r| match col {
                            COL_ID => r.id,
                            COL_STREAM => r.stream_id,
                            COL_TS => r.ts,
                            COL_OBSERVED => r.observed,
                            _ => r.template_id as i64,
                        })
                        .collect();
                    w.write_batch(&v, None, None).map(|_| ())
                }
                (COL_LEVEL | COL_FLAGS, ColumnWriter::Int32ColumnWriter(w)) => {
                    let v: Vec<i32> = rows
                        .iter()
                        .map(|r| {
                            if col == COL_LEVEL {
                                r.level as i32
                            } else {
                                i32::from(r.flags)
                            }
                        })
                        .collect();
                    w.write_batch(&v, None, None).map(|_| ())
                }
                (COL_LINE, ColumnWriter::ByteArrayColumnWriter(w)) => {
                    // A valid line moves into the column; an invalid one is written
                    // lossily here and kept whole for `line_raw` (the next column),
                    // which it is moved into then.
                    let def: Vec<i16> = templated.iter().map(|t| i16::from(!t)).collect();
                    let v: Vec<ByteArray> = rows
                        .iter_mut()
                        .zip(&templated)
                        .filter(|(_, t)| !**t)
                        .map(|(r, _)| match String::from_utf8_lossy(&r.line) {
                            std::borrow::Cow::Borrowed(_) => {
                                ByteArray::from(std::mem::take(&mut r.line))
                            }
                            std::borrow::Cow::Owned(lossy) => ByteArray::from(lossy.into_bytes()),
                        })
                        .collect();
                    w.write_batch(&v, Some(&def), None).map(|_| ())
                }
                (COL_RAW, ColumnWriter::ByteArrayColumnWriter(w)) => {
                    // Valid lines kept whole were moved out above (left empty, which
                    // is valid UTF-8); what is still invalid here is the raw line.
                    let raw = |r: &SegmentRow, t: bool| !t && std::str::from_utf8(&r.line).is_err();
                    let def: Vec<i16> = rows
                        .iter()
                        .zip(&templated)
                        .map(|(r, t)| i16::from(raw(r, *t)))
                        .collect();
                    let v: Vec<ByteArray> = rows
                        .iter_mut()
                        .zip(&templated)
                        .filter(|(r, t)| raw(r, **t))
                        .map(|(r, _)| ByteArray::from(std::mem::take(&mut r.line)))
                        .collect();
                    w.write_batch(&v, Some(&def), None).map(|_| ())
                }
                (COL_BLOCK, ColumnWriter::ByteArrayColumnWriter(w)) => {
                    let mut def = vec![0i16; rows.len()];
                    let mut v = Vec::new();
                    if templated.iter().any(|t| *t) {
                        def[0] = 1;
                        v.push(ByteArray::from(std::mem::take(&mut block)));
                    }
                    w.write_batch(&v, Some(&def), None).map(|_| ())
                }
                (COL_LABELS, ColumnWriter::ByteArrayColumnWriter(w)) => {
                    // One shared buffer per stream, not a copy per row.
                    let none = bytes::Bytes::from_static(b"[]");
                    let v: Vec<ByteArray> = rows
                        .iter()
                        .map(|r| {
                            ByteArray::from(
                                self.label_bytes.get(&r.stream_id).unwrap_or(&none).clone(),
                            )
                        })
                        .collect();
                    w.write_batch(&v, None, None).map(|_| ())
                }
                (COL_META, ColumnWriter::ByteArrayColumnWriter(w)) => {
                    let json: Vec<Option<String>> = rows
                        .iter()
                        .map(|r| super::hot::metadata_json(&r.metadata))
                        .collect();
                    let def: Vec<i16> = json.iter().map(|j| i16::from(j.is_some())).collect();
                    let v: Vec<ByteArray> = json
                        .into_iter()
                        .flatten()
                        .map(|j| ByteArray::from(j.into_bytes()))
                        .collect();
                    w.write_batch(&v, Some(&def), None).map(|_| ())
                }
                _ => {
                    return Err(Error::Corrupt {
                        path,
                        what: format!("unexpected column {col} in the schema"),
                    })
                }
            };
            res.map_err(pq(&path))?;
            c.close().map_err(pq(&path))?;
            col += 1;
        }
        rg.close().map_err(pq(&path))?;
        Ok(())
    }

    /// Writes the footer, fsyncs, and returns what the segment holds.
    ///
    /// # Errors
    /// [`Error`].
    pub fn finish(mut self) -> Result<SegmentInfo, Error> {
        self.flush()?;
        let path = self.path.clone();
        let meta = FooterMeta {
            version: VERSION,
            rows: self.rows,
            min_ts: self.min_ts,
            max_ts: self.max_ts,
            content_hash: self.content_hash,
            streams: self.streams.clone(),
        };
        let mut w = self.writer.take().expect("open until finish");
        w.append_key_value_metadata(KeyValue::new(
            META_KEY.to_owned(),
            serde_json::to_string(&meta).expect("plain data serialises"),
        ));
        let inner = w.into_inner().map_err(pq(&path))?;
        let file = inner.into_inner().map_err(|e| Error::Io {
            path: path.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io(&path))?;
        drop(file);
        let (bytes, checksum) = file_crc(&path)?;
        let bloom = self.grams.finish();
        Ok(SegmentInfo {
            rows: self.rows,
            min_ts: self.min_ts,
            max_ts: self.max_ts,
            levels: self.levels,
            streams: self.streams,
            bytes,
            raw_bytes: self.raw_bytes,
            checksum,
            content_hash: self.content_hash,
            bloom,
            row_group_blooms: self.rg_blooms,
        })
    }
}

/// Size and CRC-32C of a file.
///
/// # Errors
/// [`Error::Io`].
pub fn file_crc(path: &Path) -> Result<(u64, u32), Error> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut n, mut crc) = (0u64, 0u32);
    loop {
        let k = f.read(&mut buf).map_err(io(path))?;
        if k == 0 {
            return Ok((n, crc));
        }
        crc = crc32c::crc32c_append(crc, &buf[..k]);
        n += k as u64;
    }
}

/// What to read from a segment.
pub struct Selection<'a> {
    /// Stream ids as the file knows them.
    pub streams: &'a HashSet<i64>,
    /// `[start, end)` in ns.
    pub start: i64,
    pub end: i64,
    /// Row groups to read (by index); `None` for all.
    pub row_groups: Option<&'a [bool]>,
    /// What the caller's line filters tell from a template alone. Rows of a template
    /// every line of which passes come without their line ([`RowRef::passes`]); rows
    /// of one none of which passes, and rows its sieve rules out, do not come (a
    /// caller that needs every line answers [`Verdict::Each`] for the first).
    pub prefilter: Option<&'a dyn Fn(&TemplateView<'_>) -> Verdict>,
}

/// An open segment.
pub struct SegmentFile {
    path: PathBuf,
    reader: SerializedFileReader<File>,
}

fn i64_range(s: Option<&Statistics>) -> Option<(i64, i64)> {
    match s? {
        Statistics::Int64(v) => Some((*v.min_opt()?, *v.max_opt()?)),
        _ => None,
    }
}

impl SegmentFile {
    /// Opens a segment.
    ///
    /// # Errors
    /// [`Error`].
    pub fn open(path: &Path) -> Result<SegmentFile, Error> {
        let f = File::open(path).map_err(io(path))?;
        let reader = SerializedFileReader::new(f).map_err(pq(path))?;
        Ok(SegmentFile {
            path: path.to_owned(),
            reader,
        })
    }

    /// The footer's statistics.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when missing or malformed.
    pub fn footer(&self) -> Result<FooterMeta, Error> {
        let kv = self.reader.metadata().file_metadata().key_value_metadata();
        let text = kv
            .and_then(|kv| kv.iter().find(|k| k.key == META_KEY))
            .and_then(|k| k.value.clone())
            .ok_or_else(|| Error::Corrupt {
                path: self.path.clone(),
                what: format!("no `{META_KEY}` footer metadata"),
            })?;
        serde_json::from_str(&text).map_err(|e| Error::Corrupt {
            path: self.path.clone(),
            what: format!("footer metadata: {e}"),
        })
    }

    /// Stream labels (JSON) by file stream id, from the `labels` column.
    ///
    /// # Errors
    /// [`Error`].
    pub fn stream_labels(&self) -> Result<HashMap<i64, String>, Error> {
        let mut out = HashMap::new();
        let all: HashSet<i64> = self.footer()?.streams.iter().map(|s| s.stream_id).collect();
        self.read(
            &Selection {
                streams: &all,
                start: i64::MIN,
                end: i64::MAX,
                row_groups: None,
                prefilter: None,
            },
            true,
            |r, labels| {
                out.entry(r.stream_id)
                    .or_insert_with(|| labels.unwrap_or("[]").to_owned());
                true
            },
        )?;
        Ok(out)
    }

    /// Rows of each row group, in file order.
    pub fn row_group_rows(&self) -> Vec<usize> {
        let md = self.reader.metadata();
        (0..md.num_row_groups())
            .map(|g| md.row_group(g).num_rows() as usize)
            .collect()
    }

    /// Calls `each(row)` for every row of the segment (whose footer is `footer`) in file
    /// order until it returns `false`: what verification, erasure and catalog rebuilds
    /// read.
    ///
    /// # Errors
    /// [`Error`].
    pub fn read_all(
        &self,
        footer: &FooterMeta,
        mut each: impl FnMut(SegmentRow) -> bool,
    ) -> Result<(), Error> {
        let all: HashSet<i64> = footer.streams.iter().map(|s| s.stream_id).collect();
        self.read(
            &Selection {
                streams: &all,
                start: i64::MIN,
                end: i64::MAX,
                row_groups: None,
                prefilter: None,
            },
            false,
            |r, _| each(r),
        )?;
        Ok(())
    }

    /// Calls `each(row, labels)` for the selected rows in file order (by stream, then
    /// time) until it returns `false`; row groups whose statistics exclude the
    /// selection are not read. `labels` is given only when `with_labels`. Returns how
    /// many row groups were read.
    ///
    /// # Errors
    /// [`Error`].
    pub fn read(
        &self,
        sel: &Selection<'_>,
        with_labels: bool,
        mut each: impl FnMut(SegmentRow, Option<&str>) -> bool,
    ) -> Result<usize, Error> {
        self.visit(sel, with_labels, Columns::ALL, |r, l| each(r.into_row(), l))
    }

    /// [`SegmentFile::read`] without copying: each row borrows its line from the
    /// reader's buffers (templated lines are rebuilt one by one into one buffer), and
    /// only the columns in `cols` are read (the others read as 0 or empty).
    ///
    /// # Errors
    /// [`Error`].
    pub fn visit(
        &self,
        sel: &Selection<'_>,
        with_labels: bool,
        cols: Columns,
        mut each: impl FnMut(RowRef<'_>, Option<&str>) -> bool,
    ) -> Result<usize, Error> {
        let path = &self.path;
        let md = self.reader.metadata();
        let (smin, smax) = match (sel.streams.iter().min(), sel.streams.iter().max()) {
            (Some(a), Some(b)) => (*a, *b),
            _ => return Ok(0),
        };
        let schema = md.file_metadata().schema_descr();
        // Before the template block, `line` was required and on every row.
        let line_optional = schema.column(COL_LINE).max_def_level() > 0;
        let has_block = schema.num_columns() > COL_BLOCK;
        let has_meta = schema.num_columns() > COL_META;
        let mut decoded = 0;
        for g in 0..md.num_row_groups() {
            if sel
                .row_groups
                .is_some_and(|r| !r.get(g).copied().unwrap_or(true))
            {
                continue;
            }
            let rgm = md.row_group(g);
            if let Some((lo, hi)) = i64_range(rgm.column(COL_STREAM).statistics()) {
                if hi < smin || lo > smax {
                    continue;
                }
            }
            if let Some((lo, hi)) = i64_range(rgm.column(COL_TS).statistics()) {
                if hi < sel.start || lo >= sel.end {
                    continue;
                }
            }
            let n = rgm.num_rows() as usize;
            let rg = self.reader.get_row_group(g).map_err(pq(path))?;
            decoded += 1;
            let short = || Error::Corrupt {
                path: path.clone(),
                what: format!("row group {g} is short"),
            };
            let read_i64 = |c: usize| read_plain::<Int64Type>(rg.as_ref(), c, n, path);
            let read_i32 = |c: usize| read_plain::<Int32Type>(rg.as_ref(), c, n, path);
            let read_bytes =
                |c: usize, optional: bool| -> Result<(Vec<ByteArray>, Vec<i16>), Error> {
                    let mut v = Vec::with_capacity(n);
                    let mut def = Vec::with_capacity(n);
                    match rg.get_column_reader(c).map_err(pq(path))? {
                        ColumnReader::ByteArrayColumnReader(mut r) => {
                            let mut recs_total = 0;
                            while recs_total < n {
                                let (recs, _, _) = r
                                    .read_records(
                                        n - recs_total,
                                        optional.then_some(&mut def),
                                        None,
                                        &mut v,
                                    )
                                    .map_err(pq(path))?;
                                if recs == 0 {
                                    break;
                                }
                                recs_total += recs;
                            }
                        }
                        _ => {
                            return Err(Error::Corrupt {
                                path: path.clone(),
                                what: format!("column {c} is not binary"),
                            })
                        }
                    }
                    // A required column has no definition levels: every row is there.
                    if !optional {
                        def = vec![1; v.len()];
                    }
                    Ok((v, def))
                };
            let streams = read_i64(COL_STREAM)?;
            let ts = read_i64(COL_TS)?;
            if streams.len() != n || ts.len() != n {
                return Err(short());
            }
            // Rows come by stream: a stream is looked up once per run.
            let mut last: Option<(i64, bool)> = None;
            let keep: Vec<bool> = (0..n)
                .map(|i| {
                    let s = streams[i];
                    let wanted = match last {
                        Some((ls, w)) if ls == s => w,
                        _ => {
                            let w = sel.streams.contains(&s);
                            last = Some((s, w));
                            w
                        }
                    };
                    wanted && ts[i] >= sel.start && ts[i] < sel.end
                })
                .collect();
            if !keep.iter().any(|k| *k) {
                continue;
            }
            let zeros = || vec![0; n];
            let (ids, observed, templates) = if cols.extra {
                (
                    read_i64(COL_ID)?,
                    read_i64(COL_OBSERVED)?,
                    read_i64(COL_TEMPLATE)?,
                )
            } else {
                (zeros(), zeros(), zeros())
            };
            let levels = read_i32(COL_LEVEL)?;
            let flags = read_i32(COL_FLAGS)?;
            let absent = || -> (Vec<ByteArray>, Vec<i16>) { (Vec::new(), vec![0; n]) };
            let (lines, line_def) = if cols.line {
                read_bytes(COL_LINE, line_optional)?
            } else {
                absent()
            };
            let (raw, raw_def) = if cols.line {
                read_bytes(COL_RAW, true)?
            } else {
                absent()
            };
            let block = if cols.line && has_block {
                read_bytes(COL_BLOCK, true)?.0.into_iter().next()
            } else {
                None
            };
            let labels = if with_labels {
                Some(read_bytes(COL_LABELS, false)?.0)
            } else {
                None
            };
            let (meta, meta_def) = if has_meta {
                read_bytes(COL_META, true)?
            } else {
                absent()
            };
            if ids.len() != n
                || observed.len() != n
                || templates.len() != n
                || levels.len() != n
                || flags.len() != n
                || line_def.len() != n
                || raw_def.len() != n
                || meta_def.len() != n
                || labels.as_ref().is_some_and(|l| l.len() != n)
            {
                return Err(short());
            }
            // Per row, its line when kept whole (the exact bytes first), and its
            // metadata.
            let mut at = (0usize, 0usize, 0usize);
            let mut whole: Vec<Option<&[u8]>> = Vec::with_capacity(n);
            let mut metas: Vec<Option<&[u8]>> = Vec::with_capacity(n);
            for i in 0..n {
                let line_here = present(&line_def, i, &mut at.0, &lines);
                let raw_here = present(&raw_def, i, &mut at.1, &raw);
                whole.push(raw_here.or(line_here));
                metas.push(present(&meta_def, i, &mut at.2, &meta));
            }
            let mut open = true;
            let mut emit = |i: usize, line: &[u8], passes: bool| -> bool {
                let row = RowRef {
                    id: ids[i],
                    stream_id: streams[i],
                    ts: ts[i],
                    observed: observed[i],
                    level: Level::from_u8(levels[i] as u8).unwrap_or_default(),
                    template_id: templates[i] as u64,
                    flags: flags[i] as u8,
                    line,
                    passes,
                    metadata: super::hot::parse_metadata_json(
                        metas[i].and_then(|m| std::str::from_utf8(m).ok()),
                    ),
                };
                let l = labels
                    .as_ref()
                    .and_then(|l| std::str::from_utf8(l[i].data()).ok());
                open = each(row, l);
                open
            };
            // The rows the block must rebuild: wanted, with no line kept whole.
            let rebuilt = |i: usize| cols.line && keep[i] && whole[i].is_none();
            // A wanted row the block does not rebuild is emitted with its whole line.
            let plain = |i: usize, emit: &mut dyn FnMut(usize, &[u8], bool) -> bool| {
                !keep[i] || rebuilt(i) || emit(i, whole[i].unwrap_or_default(), false)
            };
            let mut left = (0..n).filter(|&i| rebuilt(i)).count();
            // A rebuilt row: emitted with its line, or without it when its template
            // passes the caller's filters, or not at all when it fails them.
            let rebuilt_row =
                |r: usize,
                 line: Rebuilt<'_>,
                 left: &mut usize,
                 emit: &mut dyn FnMut(usize, &[u8], bool) -> bool| {
                    *left -= 1;
                    match line {
                        Rebuilt::Line(l) => emit(r, l, false),
                        Rebuilt::Passes => emit(r, &[], true),
                        Rebuilt::Fails => true,
                    }
                };
            let decode = |by_row: bool, each: &mut dyn FnMut(usize, Rebuilt<'_>) -> bool| {
                let Some(b) = &block else { return Ok(()) };
                crate::columnar::decode_each(b.data(), rebuilt, by_row, sel.prefilter, each)
                    .map(|_| ())
                    .map_err(|e| Error::Corrupt {
                        path: path.clone(),
                        what: format!("row group {g}: {e}"),
                    })
            };
            if cols.any_order {
                // Rows kept whole, then the block's template by template.
                if (0..n).all(|i| plain(i, &mut emit)) && left > 0 {
                    decode(false, &mut |r, line| {
                        rebuilt_row(r, line, &mut left, &mut emit)
                    })?;
                }
            } else {
                // In row order: the rows before each rebuilt one, then it.
                let mut next_row = 0usize;
                decode(true, &mut |r, line| {
                    while next_row < r {
                        if !plain(next_row, &mut emit) {
                            return false;
                        }
                        next_row += 1;
                    }
                    next_row = r + 1;
                    rebuilt_row(r, line, &mut left, &mut emit)
                })?;
                while next_row < n && plain(next_row, &mut emit) {
                    next_row += 1;
                }
            }
            if !open {
                return Ok(decoded);
            }
            if left > 0 {
                return Err(Error::Corrupt {
                    path: path.clone(),
                    what: format!("row group {g}: {left} rows have no line"),
                });
            }
        }
        Ok(decoded)
    }

    /// Reads every row back and checks it against `info`: row count, content hash and
    /// the footer.
    ///
    /// # Errors
    /// [`Error::Corrupt`] on any difference.
    pub fn verify(&self, info: &SegmentInfo) -> Result<(), Error> {
        let footer = self.footer()?;
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut rows = 0u64;
        self.read_all(&footer, |r| {
            row_hash(&mut h, &r, footer.version);
            rows += 1;
            true
        })?;
        let bad = |what: String| Error::Corrupt {
            path: self.path.clone(),
            what,
        };
        if rows != info.rows || footer.rows != info.rows {
            return Err(bad(format!("{rows} rows read back, {} written", info.rows)));
        }
        if h != info.content_hash || footer.content_hash != info.content_hash {
            return Err(bad("content differs from what was written".into()));
        }
        Ok(())
    }
}

/// The value of an optional column at row `i` (`at` counts the values before it), or
/// `None` when the row has none.
fn present<'v>(def: &[i16], i: usize, at: &mut usize, v: &'v [ByteArray]) -> Option<&'v [u8]> {
    (def[i] == 1).then(|| {
        *at += 1;
        v.get(*at - 1).map_or(&[][..], ByteArray::data)
    })
}

/// Reads a required primitive column of a row group, refusing a file whose column has
/// another type.
fn read_plain<T: DataType>(
    rg: &dyn parquet::file::reader::RowGroupReader,
    c: usize,
    n: usize,
    path: &Path,
) -> Result<Vec<T::T>, Error> {
    let found = rg.metadata().column(c).column_type();
    if found != T::get_physical_type() {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            what: format!("column {c} is {found}, not {}", T::get_physical_type()),
        });
    }
    let mut r = get_typed_column_reader::<T>(rg.get_column_reader(c).map_err(pq(path))?);
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let (recs, _, _) = r
            .read_records(n - v.len(), None, None, &mut v)
            .map_err(pq(path))?;
        if recs == 0 {
            break;
        }
    }
    Ok(v)
}

/// Rewrites the segment `src` as `dst` with every line whole in its `line` column (the
/// template-columnar block left out), for engines that read Parquet but not that
/// block: DuckDB, Spark, pandas. Returns the rows written.
///
/// # Errors
/// [`Error`]; `dst` is removed when it fails.
pub fn export(src: &Path, dst: &Path, zstd_level: i32) -> Result<u64, Error> {
    let f = SegmentFile::open(src)?;
    let footer = f.footer()?;
    let labels = f.stream_labels()?;
    let res = (|| {
        let mut w = SegmentWriter::create_plain(dst, labels, zstd_level)?;
        w.copy_from(&f, &footer, |_| true)?;
        let info = w.finish()?;
        if info.rows != footer.rows {
            return Err(Error::Corrupt {
                path: dst.to_owned(),
                what: format!("{} rows exported of {}", info.rows, footer.rows),
            });
        }
        SegmentFile::open(dst)?.verify(&info)?;
        Ok(info.rows)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(dst);
    }
    res
}

/// Labels as stored in the `labels` column.
pub fn labels_json(l: &Labels) -> String {
    super::hot::labels_key(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::may_contain;

    /// The rows of the version-1 segment fixture (`tests/data/segment-v1.parquet`), made
    /// by the segment writer of the version before the template block.
    pub fn fixture_rows() -> Vec<SegmentRow> {
        let mut rows = Vec::new();
        for i in 0..60i64 {
            let stream = if i < 30 { 1 } else { 2 };
            let line = match i % 4 {
                0 => format!("user u{i} took {} ms from 10.0.0.{}", i * 7, i % 5).into_bytes(),
                1 => {
                    let mut v = format!("bad {i} ").into_bytes();
                    v.extend_from_slice(b"\xff\xfe utf-8");
                    v
                }
                2 => format!("GET /api/v1/items/{i} 200 {:04}", i).into_bytes(),
                _ => b"no variables here".to_vec(),
            };
            rows.push(SegmentRow {
                id: 1000 + i,
                stream_id: stream,
                ts: 1_700_000_000_000_000_000 + i * 1_000_000,
                observed: 1_700_000_000_000_000_000 + i * 1_000_000 + 5,
                level: if i % 3 == 0 {
                    Level::Error
                } else {
                    Level::Info
                },
                template_id: 42 + (i % 2) as u64,
                flags: (i % 2) as u8,
                line,
                metadata: if i % 5 == 0 {
                    Labels::new([("trace_id", "abc123")])
                } else {
                    Labels::default()
                },
            });
        }
        rows
    }

    /// The labels of streams 1 (`app=a`) and 2 (`app=b`).
    fn two_streams() -> HashMap<i64, String> {
        [
            (1, "[[\"app\",\"a\"]]".to_owned()),
            (2, "[[\"app\",\"b\"]]".to_owned()),
        ]
        .into()
    }

    fn every_row(f: &SegmentFile) -> Vec<SegmentRow> {
        let mut out = Vec::new();
        f.read_all(&f.footer().unwrap(), |r| {
            out.push(r);
            true
        })
        .unwrap();
        out
    }

    /// A segment written before the template block (footer version 1: `line` on every
    /// row, the content hash taken byte by byte) reads back row for row, verifies, and
    /// exports.
    #[test]
    fn a_version_1_segment_still_reads_verifies_and_exports() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/segment-v1.parquet"
        ));
        let f = SegmentFile::open(path).unwrap();
        let footer = f.footer().unwrap();
        assert_eq!(footer.version, 1);
        let got = every_row(&f);
        assert_eq!(got, fixture_rows());
        let info = SegmentInfo {
            rows: footer.rows,
            min_ts: footer.min_ts,
            max_ts: footer.max_ts,
            levels: 0,
            streams: footer.streams.clone(),
            bytes: 0,
            raw_bytes: 0,
            checksum: 0,
            content_hash: footer.content_hash,
            bloom: GramBuilder::for_bytes(0).finish(),
            row_group_blooms: Vec::new(),
        };
        f.verify(&info).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("export.parquet");
        assert_eq!(export(path, &out, 3).unwrap(), 60);
        assert_eq!(every_row(&SegmentFile::open(&out).unwrap()), got);
    }

    /// The same rows written now: most lines go into the template block, the rest
    /// (invalid UTF-8 among them) stay whole; every row reads back as it was.
    #[test]
    fn rows_round_trip_through_the_template_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.parquet");
        let mut w = SegmentWriter::create(&path, two_streams(), 3).unwrap();
        for r in fixture_rows() {
            w.push(r).unwrap();
        }
        let info = w.finish().unwrap();
        let f = SegmentFile::open(&path).unwrap();
        f.verify(&info).unwrap();
        assert_eq!(f.footer().unwrap().version, VERSION);
        let got = every_row(&f);
        assert_eq!(got, fixture_rows());
        let (templated, _) = crate::columnar::encode(got.iter().map(|r| &r.line[..]));
        assert!(
            templated.iter().filter(|t| **t).count() >= 30,
            "{templated:?}"
        );
    }

    fn row(id: i64, stream: i64, ts: i64, line: &[u8]) -> SegmentRow {
        SegmentRow {
            id,
            stream_id: stream,
            ts,
            observed: ts + 1,
            level: Level::Warn,
            template_id: 42,
            flags: 0,
            line: line.to_vec(),
            metadata: Labels::default(),
        }
    }

    #[test]
    fn rows_round_trip_with_pruning_and_raw_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.parquet");
        let mut w = SegmentWriter::create(&path, two_streams(), 3).unwrap();
        let mut want = Vec::new();
        for s in [1i64, 2] {
            for i in 0..100_000i64 {
                let line: Vec<u8> = if i == 7 {
                    b"bad \xff\xfe bytes".to_vec()
                } else {
                    format!("GET /api/{s}/{i} trace=4bf92f3577b34da6a3ce{i:010}").into_bytes()
                };
                let r = row(s * 1_000_000 + i, s, 1_000 + i, &line);
                want.push(r.clone());
                w.push(r).unwrap();
            }
        }
        let info = w.finish().unwrap();
        assert_eq!(info.rows, 200_000);
        assert_eq!(info.streams.len(), 2);
        assert!(
            info.bytes < info.raw_bytes / 5,
            "{} of {}",
            info.bytes,
            info.raw_bytes
        );
        let f = SegmentFile::open(&path).unwrap();
        f.verify(&info).unwrap();
        // One needle filter per row group: the needle (the last line of each stream)
        // passes the filters of the row groups holding rows 99,999 and 199,999, and
        // reading only the row groups that pass finds both lines. Rows of another
        // stream's id pass none.
        let groups = f.row_group_rows();
        assert_eq!(groups.len(), 200_000usize.div_ceil(ROW_GROUP_ROWS));
        assert_eq!(info.row_group_blooms.len(), groups.len());
        let needle = b"trace=4bf92f3577b34da6a3ce0000099999";
        let pass: Vec<bool> = info
            .row_group_blooms
            .iter()
            .map(|b| may_contain(b, needle))
            .collect();
        assert!(
            pass[99_999 / ROW_GROUP_ROWS] && pass[199_999 / ROW_GROUP_ROWS],
            "{pass:?}"
        );
        assert!(!pass.iter().all(|p| *p), "{pass:?}");
        assert!(info
            .row_group_blooms
            .iter()
            .all(|b| !may_contain(b, b"GET /api/3/")));
        let both: HashSet<i64> = [1, 2].into();
        let mut found = Vec::new();
        f.read(
            &Selection {
                streams: &both,
                start: i64::MIN,
                end: i64::MAX,
                row_groups: Some(&pass),
                prefilter: None,
            },
            false,
            |r, _| {
                if memchr::memmem::find(&r.line, needle).is_some() {
                    found.push(r.id);
                }
                true
            },
        )
        .unwrap();
        assert_eq!(found, [1_099_999, 2_099_999]);
        let one: HashSet<i64> = [2].into();
        let mut got = Vec::new();
        f.read(
            &Selection {
                streams: &one,
                start: 1_005,
                end: 1_010,
                row_groups: None,
                prefilter: None,
            },
            false,
            |r, _| {
                got.push(r);
                true
            },
        )
        .unwrap();
        assert_eq!(got, want[100_005..100_010].to_vec());
        let mut raw = Vec::new();
        f.read(
            &Selection {
                streams: &one,
                start: 1_007,
                end: 1_008,
                row_groups: None,
                prefilter: None,
            },
            false,
            |r, _| {
                raw.push(r.line);
                true
            },
        )
        .unwrap();
        assert_eq!(raw, vec![b"bad \xff\xfe bytes".to_vec()]);
        // In any order, with only the line: the same lines of stream 2 in a time
        // range (the raw one among them), each once.
        let mut any: Vec<(i64, Vec<u8>)> = Vec::new();
        f.visit(
            &Selection {
                streams: &one,
                start: 1_000,
                end: 71_000,
                row_groups: None,
                prefilter: None,
            },
            false,
            Columns {
                line: true,
                extra: false,
                any_order: true,
            },
            |r, _| {
                any.push((r.ts, r.line.to_vec()));
                true
            },
        )
        .unwrap();
        any.sort();
        let expect: Vec<(i64, Vec<u8>)> = want[100_000..170_000]
            .iter()
            .map(|r| (r.ts, r.line.clone()))
            .collect();
        assert_eq!(any, expect);
        let labels = f.stream_labels().unwrap();
        assert_eq!(labels[&2], "[[\"app\",\"b\"]]");
        // The bloom filter: present tokens and infixes pass; an absent id does not.
        assert!(may_contain(
            &info.bloom,
            b"trace=4bf92f3577b34da6a3ce0000099999"
        ));
        assert!(may_contain(&info.bloom, b"f3577b34da6a3ce00000"));
        assert!(may_contain(&info.bloom, b"/api/2/"));
        assert!(!may_contain(&info.bloom, b"trace=deadbeefcafe1234567"));
        assert!(!may_contain(&info.bloom, b" zebra "));
        // A corrupted file fails verification.
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let broken = SegmentFile::open(&path).and_then(|f| f.verify(&info));
        assert!(broken.is_err());
    }
}

//! RocksDB tuning: the process-wide block cache and memtable budget, the
//! per-column-family options, the WAL and info-log bounds, and the memory
//! figures reported in metrics.

use super::*;

/// What RocksDB may hold in memory in this process, whatever is captured:
/// one block cache for every column family of every store (data, index and
/// filter blocks), and the memtables of every store charged to it (a write
/// buffer manager that flushes the biggest memtable once they pass
/// `MEMTABLE_CAP`). Without the charge, 8 column families × 2 memtables of
/// 64 MiB could hold 1 GiB beside the cache, and an overload soak's RSS grew
/// by 270 MB that no metric showed.
pub const STORAGE_MEMORY_CAP: u64 = 256 << 20;
pub(super) const MEMTABLE_CAP: usize = 64 << 20;

/// The shared block cache, in 16 shards of 16 MiB (RocksDB's default for
/// this size is 64 shards of 4 MiB, and a block bigger than its shard is
/// read from the file again on every access).
pub(super) fn block_cache() -> &'static rocksdb::Cache {
    static CACHE: std::sync::OnceLock<rocksdb::Cache> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| {
        let mut o = rocksdb::LruCacheOptions::default();
        o.set_capacity(STORAGE_MEMORY_CAP as usize);
        o.set_num_shard_bits(4);
        rocksdb::Cache::new_lru_cache_opts(&o)
    })
}

pub(super) fn write_buffer_manager() -> &'static rocksdb::WriteBufferManager {
    static WBM: std::sync::OnceLock<rocksdb::WriteBufferManager> = std::sync::OnceLock::new();
    WBM.get_or_init(|| {
        rocksdb::WriteBufferManager::new_write_buffer_manager_with_cache(
            MEMTABLE_CAP,
            false,
            block_cache().clone(),
        )
    })
}

/// RocksDB's memory in this process (every store), in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageMemory {
    /// Everything the block cache holds, memtables charged to it included.
    pub block_cache: u64,
    /// Of which memtables.
    pub memtables: u64,
    /// Table readers outside the cache (the pinned top-level index and filter
    /// partitions live in the cache; this is the rest).
    pub table_readers: u64,
}

impl StorageMemory {
    pub fn total(&self) -> u64 {
        self.block_cache + self.table_readers
    }
}

/// Events are read one by one (point lookups from the indexes): small blocks
/// and a bloom filter; the indexes are read in ranges: larger blocks.
///
/// zstd's level 1 for every level but L0 (`ZSTD_LEVEL`): RocksDB's default
/// (3) spent about a fifth of the process's CPU in memtable flushes and held
/// durable throughput at ~450 k events/s; level 1 gave ~615 k/s with the
/// same bytes per event (22, after compaction), and level −3 ~600 k/s at 33.
///
/// L0, the files memtable flushes write, is LZ4 in its fast mode
/// (`FAST_LEVEL`, −1; the level is one option for every level but the
/// bottom, so the zstd levels between L0 and the bottom, which a store
/// only has once its bottom level passes ~2.5 GB, run zstd's fast mode −1
/// too; the bottom keeps `ZSTD_LEVEL`). At level 1 RocksDB ran LZ4HC's
/// fastest level (`LZ4MID_compress`, a tenth of the process's CPU in a
/// CPU-bound producer's lossless run): the fast mode persisted that
/// producer's terms at 577, 586 and 567 k events/s against 538, 553 and
/// 545 k/s (3 interleaved rounds of 12 s, 2026-12-08; an earlier machine
/// measured the two alike), with the same compacted size (the bottom's).
///
/// With more than one writer thread, the batches written around a memtable
/// switch interleave their ids, so consecutive L0 files overlap and every
/// L0 file is rewritten into
/// the base level anyway (RocksDB's info log of a 5 s CPU-bound run: each
/// compaction merged 4 L0 files into L6). With zstd at L0, each byte was
/// compressed twice and decompressed once in zstd; LZ4 makes the flush and
/// the compaction's read cheap: a CPU-bound producer's terms persisted at
/// ~316 k events/s against ~266 k/s (medians of 5 interleaved runs each).
/// No LZ4 file stays: RocksDB moves a file down without rewriting it only if
/// its compression is the target level's, so every L0 file is recompressed
/// with zstd when L0 compacts (at 4 files), and a store keeps no more than
/// its few newest L0 files in LZ4 (1.3–1.7× the zstd size).
pub(super) const ZSTD_LEVEL: i32 = 1;
pub(super) const FAST_LEVEL: i32 = -1;

/// The compression of each level: L0 LZ4, every other level zstd (with
/// dynamic level sizes, entries after the first apply from the base level
/// down).
const COMPRESSION_PER_LEVEL: [DBCompressionType; 7] = [
    DBCompressionType::Lz4,
    DBCompressionType::Zstd,
    DBCompressionType::Zstd,
    DBCompressionType::Zstd,
    DBCompressionType::Zstd,
    DBCompressionType::Zstd,
    DBCompressionType::Zstd,
];

/// How many memtables a column family may hold (the one written and those
/// waiting for a flush), and how big each may grow.
///
/// With RocksDB's defaults (2 of 64 MiB: the store's 32 MiB write buffer
/// size was set on the default column family only), writes stopped whenever
/// a column family switched memtables while its last one still waited for
/// the flush thread (one per store, for 8 column families; the write buffer
/// manager makes several switch at once): RocksDB's info log of a 60 s
/// CPU-bound lossless run showed 44 such stops of the events column family
/// and 39 of `by_pid`.
///
/// 4 of 32 MiB keep the same most memory per column family (128 MiB) and
/// stop writes less often. Memory is what the writers buy throughput with
/// here: over 30 s of the same run, RocksDB's peak and the rate persisted
/// were ~100 MiB and 206–226 k events/s at 2 × 64 MiB, 153–155 MiB and
/// 215–252 k/s at 4 × 32 MiB, and 247–274 MiB and 268–272 k/s at 4 × 64 MiB,
/// which passes the `STORAGE_MEMORY_CAP` the memtables are charged to (the
/// metrics alert at an eighth over it).
pub(super) const MEMTABLES_PER_CF: i32 = 4;
pub(super) const MEMTABLE_BYTES: usize = 32 << 20;

/// The size of the events column family's files (RocksDB's default is
/// 64 MiB). Event ids grow with time, so a compaction of L0 into the bottom
/// level overlaps only its newest file or two, and rewrites them whole: with
/// 64 MiB files that was all of a young store's events on every compaction
/// (a 20 s run's second compaction read 22.7 MB from L0 and 17.4 MB, the
/// whole bottom level, again). With 8 MiB files the bottom level's share of
/// the compactions' reads in a 20 s run went from 24 % to 9 %, and a 45 s
/// CPU-bound lossless run persisted 274 and 273 k events/s against 258 and
/// 260 k/s.
pub(super) const EVENTS_FILE_BYTES: u64 = 8 << 20;

pub(super) fn cf_options(name: &str) -> Options {
    let mut o = Options::default();
    o.set_max_write_buffer_number(MEMTABLES_PER_CF);
    o.set_write_buffer_size(MEMTABLE_BYTES);
    o.set_compression_type(DBCompressionType::Zstd);
    o.set_compression_per_level(&COMPRESSION_PER_LEVEL);
    o.set_bottommost_compression_type(DBCompressionType::Zstd);
    o.set_compression_options(-14, FAST_LEVEL, 0, 0);
    o.set_bottommost_compression_options(-14, ZSTD_LEVEL, 0, 0, true);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(block_cache());
    // Index and filter in 4 KiB partitions under a small top-level block that
    // stays pinned: a monolithic index or filter of a big file runs to
    // megabytes (5.5 MB in a 10M-event store), is evicted by any scan, and is
    // then read whole again by the next point lookup.
    table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_metadata_block_size(4 * 1024);
    table.set_cache_index_and_filter_blocks(true);
    table.set_cache_index_and_filter_blocks_with_high_priority(true);
    table.set_pin_top_level_index_and_filter(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    if name == CF_EVENTS {
        table.set_block_size(4 * 1024);
        table.set_bloom_filter(10.0, false);
        table.set_partition_filters(true);
        o.set_target_file_size_base(EVENTS_FILE_BYTES);
    } else {
        table.set_block_size(16 * 1024);
    }
    o.set_block_based_table_factory(&table);
    o
}

/// How many bytes of write-ahead log a store keeps at most (RocksDB's
/// `max_total_wal_size`): past it, the memtables that hold the oldest log
/// are flushed and the log deleted. It bounds what an open replays (a
/// read-only open of a store being written replays all of it) and the disk a
/// store needs on top of its data to recover after a full disk.
pub const MAX_WAL_BYTES: u64 = 64 << 20;

/// How many of a store's files RocksDB keeps open at once (its table
/// cache; RocksDB's default is all of them). Each open file holds a table
/// reader outside the block cache, and a file descriptor: in a 25-minute
/// soak the process's memory outside RocksDB's reported usage grew by
/// ~60 MB as the store passed 1 200 files, and a store that size needs more
/// descriptors than a default `ulimit -n` of 1 024. Queries of files not
/// open pay an open (footer and index read) first.
pub(super) const MAX_OPEN_FILES: i32 = 256;

/// RocksDB's own info logs (`LOG`, `LOG.old.*`): warnings only, at most
/// this many files of at most `INFO_LOG_BYTES` (every open starts a new one;
/// unbounded, a writer reopening a store on a full disk filled it with them).
pub(super) const INFO_LOG_FILES: usize = 3;
pub(super) const INFO_LOG_BYTES: usize = 1 << 20;

/// How long a read-only open keeps retrying the transient states of a store
/// that a live writer is changing (a file replaced by a flush or compaction
/// between reading the manifest and opening the file).
pub(super) const LIVE_OPEN_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a read-only open keeps RocksDB's info log: not in the store's
/// directory, which a read-only open must not change (a live writer's
/// `LOG` would be rotated under it; a directory that cannot be written —
/// immutable, on read-only media, mid-outage — could not be opened at all).
/// `None` (the store's directory, as RocksDB's default) if it cannot be made.
pub(super) fn read_only_log_dir() -> Option<&'static Path> {
    static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        // one per user, theirs only (a directory someone else made is not used)
        // SAFETY: geteuid has no preconditions and cannot fail
        let uid = unsafe { libc::geteuid() };
        let dir = std::env::temp_dir().join(format!("causeway-read-only-logs-{uid}"));
        super::perms::create_private_dir(&dir).ok()?;
        super::perms::check_owner(&dir).ok()?;
        Some(dir)
    })
    .as_deref()
}

pub(super) fn db_options(create: bool, recovery: rocksdb::DBRecoveryMode) -> Options {
    let mut o = Options::default();
    o.create_if_missing(create);
    o.create_missing_column_families(create);
    o.set_max_background_jobs(2);
    o.set_write_buffer_size(MEMTABLE_BYTES);
    o.set_compression_type(DBCompressionType::Zstd);
    o.set_wal_recovery_mode(recovery);
    o.set_max_total_wal_size(MAX_WAL_BYTES);
    o.set_log_level(rocksdb::LogLevel::Warn);
    o.set_keep_log_file_num(INFO_LOG_FILES);
    o.set_max_log_file_size(INFO_LOG_BYTES);
    o.set_write_buffer_manager(write_buffer_manager());
    o.set_max_open_files(MAX_OPEN_FILES);
    o
}

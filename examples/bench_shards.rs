//! Shard measurements on a sample folder (`imet sample`), side by side in
//! one run (see `docs/bench/shards.md`):
//!
//! 1. format: the sample's training images as tar shards (imet's writer)
//!    and as one Parquet file with a binary column (arrow-rs, no
//!    compression): build time, size, sequential read of every image (no
//!    decode) from a local folder, and the bytes one image costs by id;
//! 2. build time of the shard set (local folder -> local folder, and S3 ->
//!    S3), shard size against the originals;
//! 3. sequential fetch throughput (no decode) from an S3 server (s3s-fs on
//!    127.0.0.1): one GET per image object at `CONC` concurrent requests
//!    versus the shard reader, and random access by id one at a time;
//! 4. the re-encoding options: bytes, build time and decode time per image.
//!
//! ```text
//! imet sample --out /tmp/x --train 600 --test 200
//! cargo run --release --example bench_shards -- /tmp/x [CONC] [SHARD_MB]
//! ```
//! The S3 server binary is `$IMET_S3S_FS` or `~/.cache/imet-deps/bin/s3s-fs`
//! (`bash ci/setup-s3.sh`).

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use imet::ids::ImageId;
use imet::shards::{build, BuildOptions, EpochOptions, Recode, ShardIndex, ShardSet};
use imet::storage::keys::{self, Split};
use imet::storage::{Store, StoreOptions};
use std::sync::Arc;
use std::time::Instant;

fn s3s_binary() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("IMET_S3S_FS") {
        return p.into();
    }
    let home = std::env::var("HOME").expect("HOME is set");
    std::path::PathBuf::from(home).join(".cache/imet-deps/bin/s3s-fs")
}

/// An s3s-fs server on 127.0.0.1 with bucket `bench`, stopped on drop.
struct Server {
    child: std::process::Child,
    port: u16,
    _root: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(root.path().join("bench")).expect("bucket dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let child = std::process::Command::new(s3s_binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", "bench-key", "--secret-key", "bench-secret"])
            .arg(root.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("s3s-fs starts (bash ci/setup-s3.sh)");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Server { child, port, _root: root }
    }

    fn store(&self) -> Store {
        self.store_at(self.port)
    }

    /// The bucket through another port (a proxy in front of the server).
    fn store_at(&self, port: u16) -> Store {
        let opts = StoreOptions {
            s3_config: vec![
                ("aws_endpoint".into(), format!("http://127.0.0.1:{port}")),
                ("aws_access_key_id".into(), "bench-key".into()),
                ("aws_secret_access_key".into(), "bench-secret".into()),
                ("aws_region".into(), "us-east-1".into()),
            ],
            ..Default::default()
        };
        Store::open_with("s3://bench/x", opts).expect("s3 store")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The loopback fault proxy (`examples/fault_proxy.rs`, built beside this
/// example) in front of `upstream`, adding `latency_ms` before every
/// request; killed on drop. `None` when its binary is missing.
struct Proxy {
    child: std::process::Child,
    port: u16,
    _out: std::io::BufReader<std::process::ChildStdout>,
}

impl Proxy {
    fn start(upstream: u16, latency_ms: u64) -> Option<Proxy> {
        use std::io::BufRead;
        let bin = std::env::var_os("IMET_FAULT_PROXY")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::env::current_exe().expect("own path").with_file_name("fault_proxy"));
        if !bin.exists() {
            println!("(no {}: `cargo build --release --example fault_proxy` for the latency rows)", bin.display());
            return None;
        }
        let mut child = std::process::Command::new(&bin)
            .args(["--upstream", &format!("127.0.0.1:{upstream}"), "--seed", "1", "--latency-ms", &latency_ms.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("fault_proxy starts");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let (mut first, mut second) = (String::new(), String::new());
        out.read_line(&mut first).expect("proxy prints its port");
        out.read_line(&mut second).expect("proxy prints its control port");
        let port = first.trim().rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("proxy said `{first}`"));
        // Kept open: the proxy prints its counters on exit.
        Some(Proxy { child, port, _out: out })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

/// Reads a whole epoch, returns (images, bytes, seconds).
async fn read_epoch(set: &ShardSet, opts: &EpochOptions) -> imet::Result<(usize, u64, f64)> {
    let t = Instant::now();
    let mut r = set.epoch(None, opts, 0)?;
    let (mut n, mut bytes) = (0usize, 0u64);
    while let Some(s) = r.next().await {
        bytes += s?.bytes.len() as u64;
        n += 1;
    }
    Ok((n, bytes, t.elapsed().as_secs_f64()))
}

/// One GET per image object, `conc` at a time: (images, bytes, seconds).
async fn read_objects(store: &Store, ids: &[ImageId], conc: usize) -> imet::Result<(usize, u64, f64)> {
    let t = Instant::now();
    let sizes: Vec<u64> = stream::iter(ids.iter().map(|id| async move { store.get(&keys::image(Split::Train, id)).await.map(|b| b.len() as u64) }))
        .buffer_unordered(conc)
        .try_collect()
        .await?;
    Ok((sizes.len(), sizes.iter().sum(), t.elapsed().as_secs_f64()))
}

fn parquet_file(ids: &[ImageId], blobs: &[Bytes]) -> Vec<u8> {
    use arrow::array::{BinaryArray, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false), Field::new("image", DataType::Binary, false)]));
    let props = WriterProperties::builder().set_compression(parquet::basic::Compression::UNCOMPRESSED).set_dictionary_enabled(false)
        // Page size checked after every row, so pages stay near the 1 MiB
        // default limit: the best layout for reading one image.
        .set_write_batch_size(1)
        .build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, schema.clone(), Some(props)).expect("parquet writer");
    for (cid, cb) in ids.chunks(64).zip(blobs.chunks(64)) {
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(cid.iter().map(|i| i.as_str()))),
                Arc::new(BinaryArray::from_iter_values(cb.iter().map(|b| &b[..]))),
            ],
        )
        .expect("batch");
        w.write(&batch).expect("write batch");
    }
    w.close().expect("close parquet");
    out
}

#[tokio::main]
async fn main() -> imet::Result<()> {
    let mut args = std::env::args().skip(1);
    let root = args.next().expect("usage: bench_shards SAMPLE_ROOT [CONC] [SHARD_MB]");
    let conc: usize = args.next().map(|s| s.parse().expect("CONC is a number")).unwrap_or(16);
    let shard_mb: u64 = args.next().map(|s| s.parse().expect("SHARD_MB is a number")).unwrap_or(16);
    let local = Store::open(&imet::storage::root_to_url(&root)?)?;
    let inputs = imet::data::load_inputs(&local).await?;
    let ids = inputs.train.ids.clone();
    let mut blobs = Vec::new();
    for id in &ids {
        blobs.push(local.get(&keys::image(Split::Train, id)).await?);
    }
    let orig: u64 = blobs.iter().map(|b| b.len() as u64).sum();
    println!("{} training images, {:.1} MB of PNG (mean {:.0} KB); shards of {shard_mb} MB; {conc} concurrent requests", ids.len(), mb(orig), orig as f64 / ids.len() as f64 / 1e3);

    // ---- 1. format: tar vs Parquet, local folder ---------------------------
    println!("\n## format (local folder, {} images)", ids.len());
    let out_dir = tempfile::tempdir().expect("temp dir");
    let out = Store::open(&format!("file://{}", out_dir.path().display()))?;
    for k in [keys::TRAIN, keys::SAMPLE_SUBMISSION] {
        out.put(k, local.get(k).await?).await?;
    }
    for (id, b) in ids.iter().zip(&blobs) {
        out.put(&keys::image(Split::Train, id), b.clone()).await?;
    }
    let one_shard = BuildOptions { shard_bytes: 1 << 40, ..Default::default() };
    let t = Instant::now();
    let tar_index = build(&out, Split::Train, &ids, &one_shard).await?;
    let tar_build = t.elapsed().as_secs_f64();
    let tar_size = tar_index.shards[0].size;
    let tar_set = ShardSet::new(out.clone(), tar_index.clone());
    // Best of 3 for both readers, alternating.
    let mut tar_read = f64::MAX;
    let mut pq_read = f64::MAX;
    let mut tar_slice = f64::MAX;
    let tar_path = out_dir.path().join(&tar_index.shards[0].key);
    let t = Instant::now();
    let pq = parquet_file(&ids, &blobs);
    std::hint::black_box(&pq);
    let pq_build = t.elapsed().as_secs_f64();
    let pq_path = out_dir.path().join("images.parquet");
    std::fs::write(&pq_path, &pq).expect("write parquet");
    for _round in 0..3 {
        tar_read = tar_read.min(read_epoch(&tar_set, &EpochOptions::sequential()).await?.2);
        // The format's own cost: one file read, images sliced by the index.
        let t = Instant::now();
        let whole = std::fs::read(&tar_path).expect("read tar");
        let e = &tar_index.shards[0];
        let mut n = 0u64;
        for j in 0..e.len() {
            let b = &whole[e.range(j).start as usize..e.range(j).end as usize];
            assert_eq!(crc32c::crc32c(b), e.crc32c[j]);
            n += b.len() as u64;
        }
        assert_eq!(n, orig);
        tar_slice = tar_slice.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let (mut pq_n, mut pq_bytes) = (0usize, 0u64);
        {
            use arrow::array::{Array, BinaryArray};
            use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
            let f = std::fs::File::open(&pq_path).expect("open parquet");
            for batch in ParquetRecordBatchReaderBuilder::try_new(f)?.with_batch_size(64).build()? {
                let batch = batch?;
                let col = batch.column(1).as_any().downcast_ref::<BinaryArray>().expect("binary column");
                for i in 0..col.len() {
                    pq_bytes += col.value(i).len() as u64;
                    pq_n += 1;
                }
            }
        }
        pq_read = pq_read.min(t.elapsed().as_secs_f64());
        assert_eq!((pq_n as u64, pq_bytes), (tar_index.images, orig));
    }
    // Bytes read to get one image by id: tar = its own bytes (one ranged
    // read, offsets from the index); Parquet = the data page(s) holding it,
    // located by the offset index, plus the footer (cacheable).
    let (pq_page_mean, pq_footer) = {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let f = std::fs::File::open(&pq_path).expect("open parquet");
        let reader = SerializedFileReader::new(f)?;
        let md = reader.metadata();
        let chunks: u64 = md.row_groups().iter().flat_map(|rg| rg.columns().iter().map(|c| c.byte_range().1)).sum();
        let footer = pq.len() as u64 - chunks - 4;
        let mut pages = Vec::new();
        for g in 0..reader.num_row_groups() {
            let mut pr = reader.get_row_group(g)?.get_column_page_reader(1)?;
            while let Some(page) = pr.get_next_page()? {
                pages.push((page.buffer().len() as u64, page.num_values()));
            }
        }
        let per_page = ids.len() as f64 / pages.len().max(1) as f64;
        println!("parquet: {} row group(s), {} data pages in the image column ({per_page:.1} images per page)", md.num_row_groups(), pages.len());
        (pages.iter().map(|p| p.0 as f64).sum::<f64>() / pages.len().max(1) as f64, footer)
    };
    println!("| format | build s | size MB (vs PNGs) | sequential read s (images/s) | bytes per image by id |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!(
        "| tar (imet shard), EpochReader from a file:// store | {tar_build:.2} | {:.1} (+{:.2}%) | {tar_read:.3} ({:.0}) | {:.0} KB (the image; index held) |",
        mb(tar_size),
        100.0 * (tar_size as f64 / orig as f64 - 1.0),
        ids.len() as f64 / tar_read,
        orig as f64 / ids.len() as f64 / 1e3
    );
    println!("| tar, one file read + slices by the index (CRC32C checked) | | | {tar_slice:.3} ({:.0}) | |", ids.len() as f64 / tar_slice);
    println!(
        "| Parquet, binary column, uncompressed, arrow-rs reader | {pq_build:.2} | {:.1} (+{:.2}%) | {pq_read:.3} ({:.0}) | {:.0} KB (its page) + {:.1} KB footer |",
        mb(pq.len() as u64),
        100.0 * (pq.len() as f64 / orig as f64 - 1.0),
        ids.len() as f64 / pq_read,
        pq_page_mean / 1e3,
        pq_footer as f64 / 1e3
    );

    // ---- 2. build time --------------------------------------------------------
    println!("\n## build ({shard_mb} MB shards)");
    let opts = BuildOptions { shard_bytes: shard_mb << 20, ..Default::default() };
    let t = Instant::now();
    let index = build(&out, Split::Train, &ids, &opts).await?;
    let local_build = t.elapsed().as_secs_f64();
    let server = Server::start();
    let s3 = server.store();
    for k in [keys::TRAIN, keys::SAMPLE_SUBMISSION] {
        s3.put(k, local.get(k).await?).await?;
    }
    stream::iter(ids.iter().zip(&blobs).map(|(id, b)| {
        let (s3, key, b) = (&s3, keys::image(Split::Train, id), b.clone());
        async move { s3.put(&key, b).await }
    })).buffer_unordered(16).try_collect::<Vec<()>>().await?;
    let t = Instant::now();
    let s3_index = build(&s3, Split::Train, &ids, &opts).await?;
    let s3_build = t.elapsed().as_secs_f64();
    assert_eq!(s3_index, index, "same inputs, same set, whatever the store");
    let shard_total: u64 = index.shards.iter().map(|s| s.size).sum();
    let index_json = serde_json::to_vec(&index)?.len();
    println!(
        "{} shards, {:.1} MB (+{:.2}% over the PNGs: tar headers and padding), index.json {:.1} KB ({:.0} bytes per image)",
        index.shards.len(),
        mb(shard_total),
        100.0 * (shard_total as f64 / orig as f64 - 1.0),
        index_json as f64 / 1e3,
        index_json as f64 / ids.len() as f64
    );
    let per = |s: f64| s / ids.len() as f64 * 109_237.0;
    println!("build local->local {local_build:.2} s ({:.0} images/s; 109,237 images: {:.0} s)", ids.len() as f64 / local_build, per(local_build));
    println!("build S3->S3       {s3_build:.2} s ({:.0} images/s; 109,237 images: {:.0} s)", ids.len() as f64 / s3_build, per(s3_build));

    // ---- 3. sequential fetch from S3 -------------------------------------------
    println!("\n## sequential fetch from S3 (s3s-fs on 127.0.0.1), no decode");
    let set = ShardSet::open(&s3, &index.key()).await?;
    println!("| reader | requests | images/s (run 1 / 2) | MB/s (run 1 / 2) |");
    println!("| --- | ---: | ---: | ---: |");
    for c in [conc, 4] {
        let a = read_objects(&s3, &ids, c).await?;
        let b = read_objects(&s3, &ids, c).await?;
        println!("| one GET per image, {c} concurrent | {} | {:.0} / {:.0} | {:.1} / {:.1} |", a.0, a.0 as f64 / a.2, b.0 as f64 / b.2, mb(a.1) / a.2, mb(b.1) / b.2);
    }
    for (in_flight, chunk_mb) in [(4usize, 16u64), (4, 8), (1, 16)] {
        let o = EpochOptions { seed: 1, epoch: 0, shuffle_buffer: 256, shards_in_flight: in_flight, chunk_bytes: chunk_mb << 20, ..Default::default() };
        let reqs = set.epoch(None, &o, 0)?.planned_reads().0 + index.shards.len();
        let a = read_epoch(&set, &o).await?;
        let b = read_epoch(&set, &o).await?;
        println!(
            "| shards, {in_flight} in flight, {chunk_mb} MB reads, buffer 256 | {reqs} (incl. {} HEAD) | {:.0} / {:.0} | {:.1} / {:.1} |",
            index.shards.len(),
            a.0 as f64 / a.2,
            b.0 as f64 / b.2,
            mb(a.1) / a.2,
            mb(b.1) / b.2
        );
    }
    // The same reads through the loopback proxy adding LATENCY_MS before
    // every request: what a cloud object store's per-request latency does
    // to each reader.
    for latency in [20u64, 50] {
        let Some(proxy) = Proxy::start(server.port, latency) else { break };
        let slow = server.store_at(proxy.port);
        let slow_set = ShardSet::open(&slow, &index.key()).await?;
        println!("\n## through the loopback proxy, +{latency} ms per request, no decode");
        println!("| reader | images/s (run 1 / 2) | MB/s (run 1 / 2) | best vs per-object |");
        println!("| --- | ---: | ---: | ---: |");
        let mut per_object = 0.0f64;
        for c in [conc, 64] {
            let a = read_objects(&slow, &ids, c).await?;
            let b = read_objects(&slow, &ids, c).await?;
            if c == conc {
                per_object = (a.0 as f64 / a.2).max(b.0 as f64 / b.2);
            }
            println!("| one GET per image, {c} concurrent | {:.0} / {:.0} | {:.1} / {:.1} | |", a.0 as f64 / a.2, b.0 as f64 / b.2, mb(a.1) / a.2, mb(b.1) / b.2);
        }
        for (in_flight, chunk_mb) in [(4usize, 16u64), (4, 4), (8, 4)] {
            let o = EpochOptions { seed: 1, epoch: 0, shuffle_buffer: 256, shards_in_flight: in_flight, chunk_bytes: chunk_mb << 20, ..Default::default() };
            let a = read_epoch(&slow_set, &o).await?;
            let b = read_epoch(&slow_set, &o).await?;
            let best = (a.0 as f64 / a.2).max(b.0 as f64 / b.2);
            println!(
                "| shards, {in_flight} in flight, {chunk_mb} MB reads | {:.0} / {:.0} | {:.1} / {:.1} | {:.1}x the per-object reader at {conc} |",
                a.0 as f64 / a.2,
                b.0 as f64 / b.2,
                mb(a.1) / a.2,
                mb(b.1) / b.2,
                best / per_object
            );
        }
    }
    // Resume half-way: what is still read.
    for buffer in [64usize, 256] {
        let o = EpochOptions { seed: 1, epoch: 0, shuffle_buffer: buffer, ..Default::default() };
        let full = set.epoch(None, &o, 0)?.planned_reads();
        for at in [ids.len() / 4, ids.len() / 2, ids.len() * 3 / 4] {
            let part = set.epoch(None, &o, at as u64)?.planned_reads();
            println!("resume at image {at} (buffer {buffer}): {} reads / {:.1} MB instead of {} / {:.1} MB", part.0, mb(part.1), full.0, mb(full.1));
        }
    }
    // Random access, one id at a time (validation / predict by id).
    let picks: Vec<ImageId> = ids.iter().step_by(7).take(60).cloned().collect();
    let t = Instant::now();
    for id in &picks {
        s3.get(&keys::image(Split::Train, id)).await?;
    }
    let obj_one = t.elapsed().as_secs_f64() / picks.len() as f64;
    let t = Instant::now();
    for id in &picks {
        set.fetch(id).await?;
    }
    let shard_one = t.elapsed().as_secs_f64() / picks.len() as f64;
    let t = Instant::now();
    let many = set.fetch_many(&picks).await?;
    let shard_many = t.elapsed().as_secs_f64();
    assert_eq!(many.len(), picks.len());
    println!("by id, one at a time ({} ids): object GET {:.2} ms, shard ranged GET {:.2} ms (first includes the shard HEAD); all {} in one fetch_many: {:.1} ms", picks.len(), obj_one * 1e3, shard_one * 1e3, picks.len(), shard_many * 1e3);
    drop(set);
    drop(server);

    // ---- 4. recoding -------------------------------------------------------------
    println!("\n## re-encoding (local folder; decode = imet's decoder, 1 thread)");
    println!("| stored as | MB (vs originals) | build s | decode ms/image |");
    println!("| --- | ---: | ---: | ---: |");
    for recode in [Recode::Original, Recode::Png { shortest_side: 640 }, Recode::Jpeg { shortest_side: 640, quality: 95 }] {
        let t = Instant::now();
        let idx: ShardIndex = build(&out, Split::Train, &ids, &BuildOptions { shard_bytes: 1 << 40, recode, ..Default::default() }).await?;
        let secs = t.elapsed().as_secs_f64();
        let set = ShardSet::new(out.clone(), idx.clone());
        let mut r = set.epoch(None, &EpochOptions::sequential(), 0)?;
        let mut all = Vec::new();
        while let Some(s) = r.next().await {
            all.push(s?);
        }
        let t = Instant::now();
        for s in &all {
            imet::image::decode(&format!("{}.{}", s.id, idx.ext), &s.bytes, u64::MAX)?;
        }
        let dec = t.elapsed().as_secs_f64() / all.len() as f64;
        println!("| {recode:?} | {:.1} ({:.0}%) | {secs:.2} | {:.2} |", mb(idx.image_bytes), 100.0 * idx.image_bytes as f64 / orig as f64, dec * 1e3);
    }
    Ok(())
}

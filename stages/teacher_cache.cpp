#include "stages/teacher_cache.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cstdio>
#include <future>

#include "adapters/adapter.h"
#include "core/io/checkpoint.h"
#include "core/data/data.h"
#include "core/base/errors.h"
#include "core/base/fault.h"
#include "core/data/h5.h"
#include "core/base/hash.h"
#include "core/base/log.h"
#include "core/dist/mpi_session.h"
#include "core/base/process.h"
#include "core/prune/distill_loss.h"
#include "training/distill.h"
#include "training/student.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Logits are taken over at most this many bytes of fp32 [tokens, vocab] at a time.
constexpr int64_t kLogitBytesPerPiece = 256ll << 20;


// The uniforms of the draws of samples [first, first + n): [n * L, D], from a generator keyed by the cache
// seed and the sample, so a sample draws the same tokens whatever the batch, the rank or the rerun.
at::Tensor draw_uniforms(int64_t first, int64_t n, const CacheLayout& layout, int64_t seed) {
  std::vector<at::Tensor> rows;
  for (int64_t s = first; s < first + n; ++s) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(
        mix_seed({static_cast<uint64_t>(seed), static_cast<uint64_t>(s)}, "teacher-draws"));
    rows.push_back(at::rand({layout.seq_len, layout.draws}, gen));
  }
  return at::cat(rows);
}

// Sampled tokens (with counts) and the entropy of the LM head's distribution over [n, L, hidden]
// features, a piece of tokens at a time; `uniforms` [n * L, D] on the host.
CacheChunk sampled_chunk(const Model& model, const at::Tensor& features, const CacheLayout& layout,
                         const at::Tensor& uniforms) {
  const int64_t n = features.size(0), L = features.size(1);
  const at::Tensor flat = features.reshape({n * L, features.size(2)});
  // fp32 logits, their softmax and its running sum: three [piece, vocab] tensors.
  const int64_t piece = std::max<int64_t>(1, kLogitBytesPerPiece / (layout.vocab_size * 4 * 3));
  std::vector<at::Tensor> ids, counts, entropy;
  for (int64_t t = 0; t < n * L; t += piece) {
    const int64_t e = std::min(n * L, t + piece);
    const SampledLogits s = sample_logits(model.head(flat.slice(0, t, e)), uniforms.slice(0, t, e));
    ids.push_back(s.ids), counts.push_back(s.counts), entropy.push_back(s.entropy);
  }
  CacheChunk c;
  c.sampled_ids = at::cat(ids).view({n, L, layout.draws});
  c.sampled_counts = at::cat(counts).view({n, L, layout.draws});
  c.entropy = at::cat(entropy).view({n, L});
  return c;
}

// Top-k and log-sum-exp of the LM head over [n, L, hidden] features, a piece of tokens at a time.
CacheChunk lm_chunk(const Model& model, const at::Tensor& features, const CacheLayout& layout) {
  const int64_t n = features.size(0), L = features.size(1);
  const at::Tensor flat = features.reshape({n * L, features.size(2)});
  const int64_t piece = std::max<int64_t>(1, kLogitBytesPerPiece / (layout.vocab_size * 4));
  std::vector<at::Tensor> values, indices, lse;
  for (int64_t t = 0; t < n * L; t += piece) {
    const at::Tensor logits = model.head(flat.slice(0, t, std::min(n * L, t + piece))).to(at::kFloat);
    lse.push_back(at::logsumexp(logits, -1));
    auto [v, i] = logits.topk(layout.top_k, -1, /*largest=*/true, /*sorted=*/true);
    values.push_back(v.to(layout.store_dtype == "fp16" ? at::kHalf : at::kBFloat16));
    indices.push_back(i.to(at::kInt));
  }
  CacheChunk c;
  c.topk_values = at::cat(values).view({n, L, layout.top_k});
  c.topk_indices = at::cat(indices).view({n, L, layout.top_k});
  c.logsumexp = at::cat(lse).view({n, L});
  return c;
}

}  // namespace

uint64_t hash_model_weights(const fs::path& model_dir) {
  const HfCheckpoint ckpt = HfCheckpoint::open(model_dir);
  Hasher h;
  for (const auto& name : ckpt.tensor_names()) {
    const auto& info = ckpt.info(name);
    h.update(name);
    h.update(safetensors::dtype_name(info.dtype));
    for (int64_t d : info.shape) h.update_u64(static_cast<uint64_t>(d));
    h.update(ckpt.bytes(name), info.nbytes());
  }
  return h.digest();
}

std::string TeacherCacheStage::fingerprint(const StageContext& ctx) {
  const Config& c = ctx.config;
  const HfCheckpoint ckpt = with_context("loading model: ", [&] { return HfCheckpoint::open(c.model.path); });
  const auto config_file = c.model.path / "config.json";
  const ArchSummary arch = adapter_for(ckpt.config(), config_file).summarize(ckpt.config(), config_file);
  targets_.clear();
  targets_.push_back({"data", data_spec(c), {}, {}});
  if (c.heal.steps > 0 && !c.heal.data.empty()) {
    DataSpec heal = data_spec(c);
    heal.path = c.heal.data;
    heal.samples = 0;
    targets_.push_back({"heal.data", heal, {}, {}});
  }

  // Rank 0 reads the weights and the data once; every rank gets the same hashes.
  uint64_t weights = 0;
  if (process_info().rank == 0) {
    const auto t0 = Clock::now();
    weights = hash_model_weights(c.model.path);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    log::info("teacher_cache: hashed " + std::to_string(ckpt.total_bytes() / 1000000) + " MB of teacher weights in " +
              std::to_string(s).substr(0, 5) + " s");
  }
  weights = world::broadcast(weights);
  std::string out;
  for (Target& t : targets_) {
    const auto data = open_data_spec(t.spec, arch, c.model.path);
    uint64_t content = process_info().rank == 0 ? data->content_hash() : 0;
    content = world::broadcast(content);
    CacheLayout& layout = t.layout;
    layout.kind = cache_kind(model_shape(arch).traits.output);
    layout.samples = data->size();
    if (layout.kind == "lm" && c.teacher.logits == TeacherLogits::sampled) {
      layout.kind = "lm-sampled";
      layout.seq_len = t.spec.seq_len;
      layout.draws = c.teacher.samples;
      layout.vocab_size = arch.vocab_size;
    } else if (layout.kind == "lm") {
      layout.seq_len = t.spec.seq_len;
      layout.top_k = std::min<int64_t>(c.teacher.top_k, arch.vocab_size);
      layout.vocab_size = arch.vocab_size;
      layout.store_dtype = c.teacher.store_dtype == StoreDtype::fp16 ? "fp16" : "bf16";
    } else if (layout.kind == "hidden") {
      layout.seq_len = t.spec.seq_len;
      layout.hidden_size = arch.hidden;
      layout.store_dtype = c.teacher.store_dtype == StoreDtype::fp16 ? "fp16" : "bf16";
    } else {
      layout.num_labels = arch.num_labels;
    }
    Hasher h;
    for (uint64_t v : {static_cast<uint64_t>(kTeacherCacheFormat), weights, content,
                       static_cast<uint64_t>(layout.samples), static_cast<uint64_t>(layout.seq_len),
                       static_cast<uint64_t>(layout.top_k)})
      h.update_u64(v);
    // Dtypes by name: enum values are not a stable on-disk key across LibTorch versions.
    h.update(c10::toString(compute_dtype(c)));
    h.update(layout.kind);
    h.update(layout.store_dtype);
    if (layout.kind == "hidden") h.update_u64(static_cast<uint64_t>(layout.hidden_size));
    if (layout.kind == "lm-sampled") {
      h.update_u64(static_cast<uint64_t>(layout.draws));
      h.update_u64(static_cast<uint64_t>(c.teacher.seed));
    }
    layout.fingerprint = hex64(h.digest());
    t.dir = c.teacher.cache_root / layout.fingerprint;
    out += (out.empty() ? "" : "+") + layout.fingerprint;
  }
  return out;
}

namespace {

// ", 52.3 bytes per token on disk (HDF5 included)" for caches of tokens.
std::string cache_size_text(const fs::path& dir, const CacheLayout& layout) {
  if (layout.seq_len <= 0) return {};
  uintmax_t bytes = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file()) bytes += e.file_size();
  char b[96];
  std::snprintf(b, sizeof b, ", %.1f bytes per token on disk (HDF5 and index included)",
                static_cast<double>(bytes) / static_cast<double>(layout.samples * layout.seq_len));
  return b;
}

}  // namespace

void TeacherCacheStage::run(const StageContext& ctx) {
  for (const Target& t : targets_) cache_one(ctx, t.what, t.spec, t.layout, t.dir);
}

void TeacherCacheStage::cache_one(const StageContext& ctx, const std::string& what, const DataSpec& spec,
                                  const CacheLayout& layout, const fs::path& dir) {
  const Config& c = ctx.config;
  const auto& proc = process_info();
  // The cache root must be shared by the ranks (each writes its chunks, rank 0 the index); rank 0
  // decides whether it is complete and every rank follows.
  uint64_t complete = 0;
  if (proc.rank == 0) {
    fs::create_directories(dir);
    complete = cache_complete(dir, layout);
  }
  if (world::broadcast(complete)) {
    log::info("teacher_cache: reused the complete cache " + dir.string() + " (no teacher forward)" + cache_size_text(dir, layout));
    return;
  }
  fs::create_directories(dir);

  const at::Device device = run_device(c);
  const HfCheckpoint ckpt = HfCheckpoint::open(c.model.path);
  const auto config_file = c.model.path / "config.json";
  const auto& adapter = adapter_for(ckpt.config(), config_file);
  const ArchSummary arch = adapter.summarize(ckpt.config(), config_file);
  const auto model = with_context("loading teacher: ", [&] { return adapter.load(ckpt, {compute_dtype(c), device}); });
  const auto data = open_data_spec(spec, arch, c.model.path);
  if (what != "data") log::info("teacher_cache: caching " + what + " = " + spec.path.string());

  // Contiguous chunk ranges per rank.
  const auto chunks = layout.chunks();
  const size_t first = chunks.size() * static_cast<size_t>(proc.rank) / static_cast<size_t>(proc.size);
  const size_t last = chunks.size() * static_cast<size_t>(proc.rank + 1) / static_cast<size_t>(proc.size);
  int64_t mine = 0, computed = 0, reused = 0;
  for (size_t i = first; i < last; ++i) mine += chunks[i].second - chunks[i].first;

  // The HDF5 write of chunk i runs on a second thread while the device computes chunk i + 1. With an
  // HDF5 that is not thread-safe the main thread waits for the writer before its own HDF5 calls.
  const bool overlap = h5::library_threadsafe();
  std::future<void> writer;
  auto wait_writer = [&] {
    if (!writer.valid()) return;
    writer.get();  // rethrows the writer's error here
    fault_point("teacher_cache.after_chunk");  // a chunk is on disk
  };

  at::InferenceMode inference;
  fault_point("teacher_cache.before_first_write");
  const auto t0 = Clock::now();
  auto last_report = t0;
  double forward_s = 0;
  for (size_t i = first; i < last; ++i) {
    const auto [start, end] = chunks[i];
    if (!overlap) wait_writer();
    if (cache_chunk_ready(dir, layout, start, end)) {
      reused += end - start;
      continue;
    }
    std::vector<Batch> inputs;
    for (int64_t s = start; s < end; s += c.teacher.batch_size) {
      const int64_t n = std::min<int64_t>(c.teacher.batch_size, end - s);
      inputs.push_back(with_context("teacher_cache: ", [&] { return data->read(s, n); }));
    }
    const auto f0 = Clock::now();
    std::vector<CacheChunk> parts;
    int64_t batch_start = start;
    for (const Batch& cpu_batch : inputs) {
      const at::Tensor features = model->features(to_device(cpu_batch, device));
      CacheChunk part = layout.kind == "lm" ? lm_chunk(*model, features, layout) : CacheChunk{};
      if (layout.kind == "lm-sampled")
        part = sampled_chunk(*model, features, layout,
                             draw_uniforms(batch_start, features.size(0), layout, c.teacher.seed).to(device));
      batch_start += features.size(0);
      if (layout.kind == "classifier") part.logits = model->head(features).to(at::kFloat);
      if (layout.kind == "hidden")
        part.hidden_states = model->head(features).to(layout.store_dtype == "fp16" ? at::kHalf : at::kBFloat16);
      parts.push_back(std::move(part));
    }
    // Only the top-k rows cross to the host.
    CacheChunk chunk;
    auto cat = [&](at::Tensor CacheChunk::*field) {
      std::vector<at::Tensor> ts;
      for (auto& p : parts) ts.push_back(p.*field);
      return at::cat(ts).cpu();
    };
    if (layout.kind == "lm") {
      chunk.topk_values = cat(&CacheChunk::topk_values);
      chunk.topk_indices = cat(&CacheChunk::topk_indices);
      chunk.logsumexp = cat(&CacheChunk::logsumexp);
    } else if (layout.kind == "lm-sampled") {
      chunk.sampled_ids = cat(&CacheChunk::sampled_ids);
      chunk.sampled_counts = cat(&CacheChunk::sampled_counts);
      chunk.entropy = cat(&CacheChunk::entropy);
    } else if (layout.kind == "hidden") {
      chunk.hidden_states = cat(&CacheChunk::hidden_states);
    } else {
      chunk.logits = cat(&CacheChunk::logits);
    }
    chunk.sample_index = at::arange(start, end, at::kLong);
    forward_s += std::chrono::duration<double>(Clock::now() - f0).count();
    wait_writer();
    writer = std::async(std::launch::async, [&dir, &layout, start = start, end = end, chunk = std::move(chunk)] {
      write_cache_chunk(dir, layout, start, end, chunk);
    });
    computed += end - start;

    const auto now = Clock::now();
    if (proc.rank == 0 && (now - last_report > std::chrono::seconds(5) || i + 1 == last)) {
      const double s = std::chrono::duration<double>(now - t0).count();
      const double rate = computed / std::max(s, 1e-9);
      const int64_t left = mine - computed - reused;
      std::string line = "teacher_cache: rank 0 " + std::to_string(computed + reused) + "/" + std::to_string(mine) +
                         " samples, " + std::to_string(static_cast<int64_t>(rate)) + " samples/s";
      if (layout.seq_len > 0) line += ", " + std::to_string(static_cast<int64_t>(rate * layout.seq_len)) + " tokens/s";
      log::info(line + ", ETA " + log::duration(left / std::max(rate, 1e-9)));
      last_report = now;
    }
  }
  wait_writer();
  fault_point("teacher_cache.before_index");
  if (proc.rank == 0 && computed > 0) {
    char line[256];
    const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    std::snprintf(line, sizeof line,
                  "teacher_cache: rank 0 computed %lld samples in %.3f s (forward %.3f s): %.1f tokens/s on %s",
                  static_cast<long long>(computed), wall, forward_s,
                  static_cast<double>(computed * std::max<int64_t>(1, layout.seq_len)) / std::max(wall, 1e-9),
                  device.str().c_str());
    log::info(line);
  }

  // Every rank has written its chunks (or the job was aborted): only then the index.
  const int64_t total_computed = world::sum(computed), total_reused = world::sum(reused);
  if (proc.rank == 0) write_cache_index(dir, layout);
  world::barrier();
  log::info("teacher_cache: teacher forward on " + std::to_string(total_computed) + " samples, " +
            std::to_string(total_reused) + " reused from an interrupted run; cache " + dir.string() + cache_size_text(dir, layout));
}

}  // namespace hawada

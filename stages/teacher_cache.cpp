#include "stages/teacher_cache.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <fmt/format.h>

#include <chrono>
#include <future>

#include "adapters/adapter.h"
#include "core/base/errors.h"
#include "core/base/fault.h"
#include "core/base/hash.h"
#include "core/base/log.h"
#include "core/base/process.h"
#include "core/data/data.h"
#include "core/data/h5.h"
#include "core/dist/mpi_session.h"
#include "core/io/checkpoint.h"
#include "core/prune/logit_tail.h"
#include "core/prune/matmul_precision.h"
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

// What the cache keeps of the LM head over [n, L, hidden] features, a piece of tokens at a time, by the
// fused logit tail: the top-k and log-sum-exp (CacheForm::top_k), or the sampled tokens with their counts and
// the entropy (CacheForm::sampled, drawn with `uniforms` [n * L, D] on the host).
CacheChunk lm_chunk(const Model& model, const at::Tensor& features, const CacheLayout& layout,
                    const at::Tensor& uniforms) {
  const int64_t n = features.size(0), L = features.size(1);
  const at::Tensor flat = features.reshape({n * L, features.size(2)});
  // The head's logits and their fp32 copy: two [piece, vocab] tensors.
  const int64_t piece = std::max<int64_t>(1, kLogitBytesPerPiece / (layout.vocab_size * 4 * 2));
  const at::ScalarType store = scalar_type(layout.store_dtype);
  std::vector<at::Tensor> values, indices, lse, ids, counts, entropy;
  for (int64_t t = 0; t < n * L; t += piece) {
    const int64_t e = std::min(n * L, t + piece);
    TailRequest request;
    if (layout.form == CacheForm::top_k) request.top_k = layout.top_k;
    if (layout.form == CacheForm::sampled) request.uniforms = uniforms.slice(0, t, e);
    at::Tensor logits;
    {
      const HeadMatmulScope head_precision;  // bf16 products where the run asks (model.head_matmul)
      logits = model.head(flat.slice(0, t, e));
    }
    const LogitTail tail = logit_tail(logits, request);
    if (request.top_k > 0) {
      values.push_back(tail.topk_values.to(store));
      indices.push_back(tail.topk_indices);
      lse.push_back(tail.logsumexp);
    } else {
      ids.push_back(tail.sampled.ids), counts.push_back(tail.sampled.counts), entropy.push_back(tail.sampled.entropy);
    }
  }
  CacheChunk c;
  if (layout.form == CacheForm::top_k) {
    c.topk_values = at::cat(values).view({n, L, layout.top_k});
    c.topk_indices = at::cat(indices).view({n, L, layout.top_k});
    c.logsumexp = at::cat(lse).view({n, L});
  } else {
    c.sampled_ids = at::cat(ids).view({n, L, layout.draws});
    c.sampled_counts = at::cat(counts).view({n, L, layout.draws});
    c.entropy = at::cat(entropy).view({n, L});
  }
  return c;
}

// The config's teacher.store_dtype as the cache's: the one place one is mapped to the other.
CacheDtype cache_dtype(StoreDtype dtype) { return dtype == StoreDtype::fp16 ? CacheDtype::fp16 : CacheDtype::bf16; }

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

namespace {

// heal reads heal.steps x its global batch samples of heal.data; caching many more than that is teacher time spent
// on text nothing trains on (a large heal.data file would take days): said once, on rank 0, with the fix.
void warn_of_unread_heal_samples(const Config& c, int64_t samples) {
  const int64_t batch = heal_batch(c).samples(), reads = c.heal.steps * batch;
  if (process_info().rank != 0 || c.heal.samples > 0 || reads >= samples) return;
  log::warn(fmt::format(
      "teacher_cache: heal.data = {} holds {} samples and heal reads {} (heal.steps x its batch of {}): all {} are "
      "cached; heal.samples = {} would cache only the ones heal reads",
      c.heal.data.string(), samples, reads, batch, samples, reads));
}

}  // namespace

namespace {

// The teacher's architecture; where teacher.model is another model than model.path, a ConfigError unless both are
// causal LMs over the same vocabulary (the cache's token ids and the student's logits must mean the same tokens).
ArchSummary teacher_arch(const Config& c) {
  const fs::path& path = teacher_model(c);
  const HfCheckpoint ckpt = with_context("loading teacher: ", [&] { return HfCheckpoint::open(path); });
  const auto config_file = path / "config.json";
  const ArchSummary arch = adapter_for(ckpt.config(), config_file).summarize(ckpt.config(), config_file);
  if (path == c.model.path) return arch;
  const HfCheckpoint own = with_context("loading model: ", [&] { return HfCheckpoint::open(c.model.path); });
  const auto own_file = c.model.path / "config.json";
  const ArchSummary student = adapter_for(own.config(), own_file).summarize(own.config(), own_file);
  const bool lm = model_shape(arch).traits.output == ModelOutput::token_logits &&
                  model_shape(student).traits.output == ModelOutput::token_logits;
  if (!lm || arch.vocab_size != student.vocab_size)
    throw ConfigError(
        fmt::format("{}: teacher.model = '{}' must be a causal LM over model.path's vocabulary ({} tokens), got {}",
                    c.source.string(), path.string(), student.vocab_size,
                    lm ? fmt::format("{} tokens", arch.vocab_size) : std::string("a model without token logits")));
  return arch;
}

}  // namespace

std::string TeacherCacheStage::fingerprint(const StageContext& ctx) {
  const Config& c = ctx.config;
  const ArchSummary arch = teacher_arch(c);
  const HfCheckpoint ckpt = HfCheckpoint::open(teacher_model(c));
  targets_.clear();
  targets_.push_back({"data", data_spec(c), {}, {}});
  if (c.heal.steps > 0 && !c.heal.data.empty()) {
    targets_.push_back({"heal.data", heal_data_spec(c), {}, {}});
  }

  // Rank 0 reads the weights and the data once; every rank gets the same hashes.
  uint64_t weights = 0;
  if (process_info().rank == 0) {
    const auto t0 = Clock::now();
    weights = hash_model_weights(teacher_model(c));
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
    layout.form = cache_form(model_shape(arch).traits.output);
    layout.samples = data->size();
    if (t.what == "heal.data") warn_of_unread_heal_samples(c, layout.samples);
    if (layout.form == CacheForm::top_k && c.teacher.logits == TeacherLogits::sampled) {
      layout.form = CacheForm::sampled;
      layout.seq_len = t.spec.seq_len;
      layout.draws = c.teacher.samples;
      layout.vocab_size = arch.vocab_size;
    } else if (layout.form == CacheForm::top_k) {
      layout.seq_len = t.spec.seq_len;
      layout.top_k = std::min<int64_t>(c.teacher.top_k, arch.vocab_size);
      layout.vocab_size = arch.vocab_size;
      layout.store_dtype = cache_dtype(c.teacher.store_dtype);
    } else if (layout.form == CacheForm::hidden) {
      layout.seq_len = t.spec.seq_len;
      layout.hidden_size = arch.hidden;
      layout.store_dtype = cache_dtype(c.teacher.store_dtype);
    } else {
      layout.num_labels = arch.num_labels;
    }
    Hasher h;
    for (uint64_t v :
         {static_cast<uint64_t>(kTeacherCacheFormat), weights, content, static_cast<uint64_t>(layout.samples),
          static_cast<uint64_t>(layout.seq_len), static_cast<uint64_t>(layout.top_k)})
      h.update_u64(v);
    // Dtypes by name: enum values are not a stable on-disk key across LibTorch versions.
    const bool lm = layout.form == CacheForm::top_k || layout.form == CacheForm::sampled;
    h.update(lm ? precision_key(c) : std::string(c10::toString(compute_dtype(c))));
    // The form and the dtype by their index.json names: the bytes every existing cache directory is keyed by.
    h.update(to_string(layout.form));
    h.update(to_string(layout.store_dtype));
    if (layout.form == CacheForm::hidden) h.update_u64(static_cast<uint64_t>(layout.hidden_size));
    if (layout.form == CacheForm::sampled) {
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
  return fmt::format(", {:.1f} bytes per token on disk (HDF5 and index included)",
                     static_cast<double>(bytes) / static_cast<double>(layout.samples * layout.seq_len));
}

// The teacher and one cache's data, on this rank's device.
struct Teacher {
  at::Device device = at::kCPU;
  std::unique_ptr<Model> model;
  std::unique_ptr<DataSource> data;
};

Teacher load_teacher(const Config& c, const DataSpec& spec) {
  Teacher t{run_device(c), nullptr, nullptr};
  const HfCheckpoint ckpt = HfCheckpoint::open(teacher_model(c));
  const auto config_file = teacher_model(c) / "config.json";
  const auto& adapter = adapter_for(ckpt.config(), config_file);
  const ArchSummary arch = adapter.summarize(ckpt.config(), config_file);
  t.model = with_context("loading teacher: ", [&] { return adapter.load(ckpt, {compute_dtype(c), t.device}); });
  t.data = open_data_spec(spec, arch, c.model.path);
  return t;
}

// What the cache keeps of one batch's teacher outputs, on the device.
CacheChunk batch_entries(const Teacher& t, const Config& c, const CacheLayout& layout, const Batch& batch,
                         int64_t first_sample) {
  const at::Tensor features = t.model->features(to_device(batch, t.device));
  CacheChunk part;
  if (layout.form == CacheForm::top_k)
    part = lm_chunk(*t.model, features, layout, at::Tensor());
  else if (layout.form == CacheForm::sampled)
    part = lm_chunk(*t.model, features, layout, draw_uniforms(first_sample, features.size(0), layout, c.teacher.seed));
  else if (layout.form == CacheForm::classifier)
    part.logits = t.model->head(features).to(at::kFloat);
  else if (layout.form == CacheForm::hidden)
    part.hidden_states = t.model->head(features).to(scalar_type(layout.store_dtype));
  return part;
}

// The cache entries of samples [start, end): the teacher over batches of teacher.batch_size, joined on the
// host (only what the cache keeps crosses to the host); the time after the reads is added to `forward_s`.
CacheChunk compute_chunk(const Teacher& t, const Config& c, const CacheLayout& layout, int64_t start, int64_t end,
                         double& forward_s) {
  std::vector<std::pair<int64_t, Batch>> inputs;  // first sample, batch
  for (int64_t s = start; s < end; s += c.teacher.batch_size) {
    const int64_t n = std::min<int64_t>(c.teacher.batch_size, end - s);
    inputs.emplace_back(s, with_context("teacher_cache: ", [&] { return t.data->read(s, n); }));
  }
  const auto f0 = Clock::now();
  std::vector<CacheChunk> parts;
  for (const auto& [first_sample, batch] : inputs) parts.push_back(batch_entries(t, c, layout, batch, first_sample));
  CacheChunk chunk;
  auto cat = [&](at::Tensor CacheChunk::*field) {
    std::vector<at::Tensor> ts;
    for (auto& p : parts) ts.push_back(p.*field);
    return at::cat(ts).cpu();
  };
  for (at::Tensor CacheChunk::*field :
       {&CacheChunk::topk_values, &CacheChunk::topk_indices, &CacheChunk::logsumexp, &CacheChunk::sampled_ids,
        &CacheChunk::sampled_counts, &CacheChunk::entropy, &CacheChunk::hidden_states, &CacheChunk::logits})
    if ((parts.front().*field).defined()) chunk.*field = cat(field);
  chunk.sample_index = at::arange(start, end, at::kLong);
  forward_s += std::chrono::duration<double>(Clock::now() - f0).count();
  return chunk;
}

// Rank 0's progress lines, every 5 s and after its last chunk.
struct Progress {
  Clock::time_point start = Clock::now(), last = start;
  int64_t mine = 0, computed = 0, reused = 0;
  double forward_s = 0;

  void report(const CacheLayout& layout, bool final) {
    const auto now = Clock::now();
    if (process_info().rank != 0 || !(now - last > std::chrono::seconds(5) || final)) return;
    const double rate = computed / std::max(seconds(), 1e-9);
    std::string line = fmt::format("teacher_cache: rank 0 {}/{} samples, {:.3g} samples/s", computed + reused, mine,
                                   rate);  // a 2,048-token LM sample takes seconds: not "0 samples/s"
    if (layout.seq_len > 0) line += fmt::format(", {} tokens/s", static_cast<int64_t>(rate * layout.seq_len));
    log::info(line + ", ETA " + log::duration((mine - computed - reused) / std::max(rate, 1e-9)));
    last = now;
  }
  double seconds() const { return std::chrono::duration<double>(Clock::now() - start).count(); }
};

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
    log::info("teacher_cache: reused the complete cache " + dir.string() + " (no teacher forward)" +
              cache_size_text(dir, layout));
    return;
  }
  fs::create_directories(dir);
  const Teacher teacher = load_teacher(c, spec);
  if (what != "data") log::info("teacher_cache: caching " + what + " = " + spec.path.string());

  // Contiguous chunk ranges per rank.
  const auto chunks = layout.chunks();
  const size_t first = chunks.size() * static_cast<size_t>(proc.rank) / static_cast<size_t>(proc.size);
  const size_t last = chunks.size() * static_cast<size_t>(proc.rank + 1) / static_cast<size_t>(proc.size);
  Progress progress;
  for (size_t i = first; i < last; ++i) progress.mine += chunks[i].second - chunks[i].first;

  // The HDF5 write of chunk i runs on a second thread while the device computes chunk i + 1. With an
  // HDF5 that is not thread-safe the main thread waits for the writer before its own HDF5 calls.
  const bool overlap = h5::library_threadsafe();
  std::future<void> writer;
  auto wait_writer = [&] {
    if (!writer.valid()) return;
    writer.get();                              // rethrows the writer's error here
    fault_point("teacher_cache.after_chunk");  // a chunk is on disk
  };

  at::InferenceMode inference;
  fault_point("teacher_cache.before_first_write");
  for (size_t i = first; i < last; ++i) {
    const auto [start, end] = chunks[i];
    if (!overlap) wait_writer();
    if (cache_chunk_ready(dir, layout, start, end)) {
      progress.reused += end - start;
      continue;
    }
    CacheChunk chunk = compute_chunk(teacher, c, layout, start, end, progress.forward_s);
    wait_writer();
    writer = std::async(std::launch::async, [&dir, &layout, start = start, end = end, chunk = std::move(chunk)] {
      write_cache_chunk(dir, layout, start, end, chunk);
    });
    progress.computed += end - start;
    progress.report(layout, i + 1 == last);
  }
  wait_writer();
  fault_point("teacher_cache.before_index");
  if (proc.rank == 0 && progress.computed > 0) {
    const double wall = progress.seconds();
    log::info(fmt::format(
        "teacher_cache: rank 0 computed {} samples in {:.3f} s (forward {:.3f} s): {:.1f} tokens/s on {}",
        progress.computed, wall, progress.forward_s,
        static_cast<double>(progress.computed * std::max<int64_t>(1, layout.seq_len)) / std::max(wall, 1e-9),
        teacher.device.str()));
  }

  // Every rank has written its chunks (or the job was aborted): only then the index.
  const int64_t total_computed = world::sum(progress.computed), total_reused = world::sum(progress.reused);
  if (proc.rank == 0) write_cache_index(dir, layout);
  world::barrier();
  log::info("teacher_cache: teacher forward on " + std::to_string(total_computed) + " samples, " +
            std::to_string(total_reused) + " reused from an interrupted run; cache " + dir.string() +
            cache_size_text(dir, layout));
}

}  // namespace hawada

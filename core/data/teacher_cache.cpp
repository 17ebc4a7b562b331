#include "core/data/teacher_cache.h"

#include <ATen/ATen.h>

#include <cmath>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/base/errors.h"
#include "core/base/fault.h"
#include "core/base/fs.h"
#include "core/base/hash.h"
#include "core/base/json_input.h"
#include "core/base/log.h"
#include "core/data/h5.h"

namespace hawada {
namespace {

namespace fs = std::filesystem;

// The names of the forms and dtypes in index.json and in the cache fingerprint: the only place they are spelled.
constexpr std::pair<CacheForm, std::string_view> kFormNames[] = {
    {CacheForm::top_k, "lm"},
    {CacheForm::sampled, "lm-sampled"},
    {CacheForm::hidden, "hidden"},
    {CacheForm::classifier, "classifier"},
};
constexpr std::pair<CacheDtype, std::string_view> kDtypeNames[] = {
    {CacheDtype::none, ""},
    {CacheDtype::fp16, "fp16"},
    {CacheDtype::bf16, "bf16"},
};

template <typename E, size_t N>
std::string_view name_in(const std::pair<E, std::string_view> (&table)[N], E value) {
  for (const auto& [v, name] : table)
    if (v == value) return name;
  HAWADA_ASSERT(false, "a cache form or dtype without a name");
  return {};
}

template <typename E, size_t N>
std::optional<E> value_in(const std::pair<E, std::string_view> (&table)[N], std::string_view name) {
  for (const auto& [v, n] : table)
    if (n == name) return v;
  return std::nullopt;
}

[[noreturn]] void cache_fail(const fs::path& file, const std::string& what) {
  throw CacheError("teacher cache file '" + file.string() + "': " + what);
}

std::string shape_string(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// The datasets a chunk of `n` samples must hold, with their shapes.
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_datasets(const CacheLayout& l, int64_t n) {
  if (l.form == CacheForm::top_k)
    return {{"topk_values", {n, l.seq_len, l.top_k}},
            {"topk_indices", {n, l.seq_len, l.top_k}},
            {"logsumexp", {n, l.seq_len}},
            {"sample_index", {n}}};
  if (l.form == CacheForm::sampled)
    return {{"sampled_ids", {n, l.seq_len, l.draws, 3}},
            {"sampled_counts", {n, l.seq_len, l.draws}},
            {"entropy", {n, l.seq_len}},
            {"row_xxh64", {n}},
            {"sample_index", {n}}};
  if (l.form == CacheForm::hidden) return {{"hidden_states", {n, l.seq_len, l.hidden_size}}, {"sample_index", {n}}};
  return {{"logits", {n, l.num_labels}}, {"sample_index", {n}}};
}

// The values of a chunk (written or read): finite logits and log-sum-exps, indices inside the
// vocabulary. `where` names the file (or the samples) in the CacheError.
void check_values(const CacheChunk& c, const CacheLayout& layout, const std::string& where) {
  if (layout.form == CacheForm::top_k) {
    if (!at::isfinite(c.topk_values.to(at::kFloat)).all().item<bool>())
      throw CacheError(where + ": topk_values holds non-finite teacher logits (a broken teacher or cache file)");
    if (!at::isfinite(c.logsumexp).all().item<bool>())
      throw CacheError(where + ": logsumexp holds non-finite values (a broken teacher or cache file)");
    if (c.topk_indices.numel() > 0) {
      const int64_t lo = c.topk_indices.min().item<int64_t>(), hi = c.topk_indices.max().item<int64_t>();
      if (lo < 0 || hi >= layout.vocab_size)
        throw CacheError(where + ": topk_indices holds token " + std::to_string(lo < 0 ? lo : hi) +
                         ", outside the vocabulary [0, " + std::to_string(layout.vocab_size) + ")");
    }
  } else if (layout.form == CacheForm::sampled) {
    const at::Tensor h = c.entropy.to(at::kFloat);
    if (!at::isfinite(h).all().item<bool>() || (h < 0).any().item<bool>() ||
        (h > std::log(static_cast<double>(layout.vocab_size)) + 1e-3).any().item<bool>())
      throw CacheError(where + ": entropy holds values outside [0, log vocab] (a broken teacher or cache file)");
    const at::Tensor counts = c.sampled_counts.to(at::kLong);
    if (!(counts.sum(-1) == layout.draws).all().item<bool>())
      throw CacheError(where + ": sampled_counts of a position do not add up to the " + std::to_string(layout.draws) +
                       " draws (a broken cache file)");
    const at::Tensor used = c.sampled_ids.masked_select(counts > 0);
    if (used.numel() > 0 && used.max().item<int64_t>() >= layout.vocab_size)
      throw CacheError(where + ": sampled_ids holds token " + std::to_string(used.max().item<int64_t>()) +
                       ", outside the vocabulary [0, " + std::to_string(layout.vocab_size) + ")");
  } else if (layout.form == CacheForm::hidden) {
    if (!at::isfinite(c.hidden_states.to(at::kFloat)).all().item<bool>())
      throw CacheError(where + ": hidden_states holds non-finite values (a broken teacher or cache file)");
  } else if (!at::isfinite(c.logits).all().item<bool>()) {
    throw CacheError(where + ": logits holds non-finite values (a broken teacher or cache file)");
  }
}

// Token ids in 3 little-endian bytes (vocabularies up to 16.7M tokens): [.., D] int32 <-> [.., D, 3] uint8.
at::Tensor pack_ids(const at::Tensor& ids) {
  const at::Tensor v = ids.to(at::kInt);
  return at::stack({v.bitwise_and(255), v.bitwise_right_shift(8).bitwise_and(255),
                    v.bitwise_right_shift(16).bitwise_and(255)},
                   -1)
      .to(at::kByte)
      .contiguous();
}
at::Tensor unpack_ids(const at::Tensor& bytes) {
  const at::Tensor b = bytes.to(at::kInt);
  return b.select(-1, 0) + b.select(-1, 1) * 256 + b.select(-1, 2) * 65536;
}

// XXH64 of each sample's stored bytes (its rows of every dataset of the form, in the order given): a reader checks
// exactly the rows it reads, so a training step reads no more than it uses.
at::Tensor row_checksums(std::initializer_list<const at::Tensor*> datasets) {
  const int64_t n = (*datasets.begin())->size(0);
  at::Tensor out = at::empty({n}, at::kLong);
  for (int64_t i = 0; i < n; ++i) {
    Hasher h;
    for (const at::Tensor* t : datasets) {
      const at::Tensor row = (*t)[i].contiguous();
      h.update(row.data_ptr(), static_cast<size_t>(row.nbytes()));
    }
    out[i] = static_cast<int64_t>(h.digest());
  }
  return out;
}

// Checks rows [row, row + rows) of chunk `f`, read into `datasets`, against their stored checksums: a flipped bit is
// a CacheError naming the chunk and the sample. A chunk written before every form had checksums (top-k, hidden,
// classifier caches of format 3's first releases) has none: it is read unverified, with one warning per process.
void verify_rows(const h5::File& f, int64_t row, int64_t rows, std::initializer_list<const at::Tensor*> datasets,
                 const char* names) {
  if (!f.has("row_xxh64")) {
    static bool warned = false;
    if (!warned)
      log::warn("teacher cache '" + f.path().string() +
                "' has no row checksums (written by an older hawada-pipeline): its bytes cannot be verified; "
                "delete the cache directory to recompute it with checksums");
    warned = true;
    return;
  }
  at::Tensor want = at::empty({rows}, at::kLong);
  f.read_rows("row_xxh64", row, rows, h5::Type::i64, want.data_ptr());
  const at::Tensor bad = (row_checksums(datasets) != want).nonzero();
  if (bad.numel() > 0)
    cache_fail(f.path(), "the stored bytes of sample " +
                             std::to_string(f.int_attribute("start") + row + bad[0][0].item<int64_t>()) +
                             " fail their checksum (row_xxh64 over " + names +
                             ": a corrupted or truncated chunk: delete it and rerun with --force teacher_cache to "
                             "recompute it)");
}

// Reads rows [row, row + rows) of a sampled chunk into `out` at `at`, checked against their checksums.
void read_sampled_rows(const h5::File& f, const CacheLayout& l, int64_t row, int64_t rows, CacheChunk& out,
                       int64_t at) {
  at::Tensor packed = at::empty({rows, l.seq_len, l.draws, 3}, at::kByte);
  at::Tensor counts = at::empty({rows, l.seq_len, l.draws}, at::kByte);
  at::Tensor entropy = at::empty({rows, l.seq_len}, at::kFloat);
  f.read_rows("sampled_ids", row, rows, h5::Type::u8, packed.data_ptr());
  f.read_rows("sampled_counts", row, rows, h5::Type::u8, counts.data_ptr());
  f.read_rows("entropy", row, rows, h5::Type::f32, entropy.data_ptr());
  verify_rows(f, row, rows, {&packed, &counts, &entropy}, "sampled_ids, sampled_counts, entropy");
  out.sampled_ids.narrow(0, at, rows).copy_(unpack_ids(packed));
  out.sampled_counts.narrow(0, at, rows).copy_(counts);
  out.entropy.narrow(0, at, rows).copy_(entropy);
}

h5::Type store_type(const CacheLayout& l) { return l.store_dtype == CacheDtype::fp16 ? h5::Type::f16 : h5::Type::u16; }
at::ScalarType store_scalar(const CacheLayout& l) { return scalar_type(l.store_dtype); }

// Reads rows [row, row + rows) of a top-k, hidden-state or classifier chunk into `out` at `at`, checked against
// their checksums.
void read_plain_rows(const h5::File& f, const CacheLayout& l, int64_t row, int64_t rows, CacheChunk& out, int64_t at) {
  if (l.form == CacheForm::top_k) {
    at::Tensor v = out.topk_values.narrow(0, at, rows), i = out.topk_indices.narrow(0, at, rows),
               e = out.logsumexp.narrow(0, at, rows);
    f.read_rows("topk_values", row, rows, store_type(l), v.data_ptr());
    f.read_rows("topk_indices", row, rows, h5::Type::i32, i.data_ptr());
    f.read_rows("logsumexp", row, rows, h5::Type::f32, e.data_ptr());
    verify_rows(f, row, rows, {&v, &i, &e}, "topk_values, topk_indices, logsumexp");
  } else if (l.form == CacheForm::hidden) {
    at::Tensor h = out.hidden_states.narrow(0, at, rows);
    f.read_rows("hidden_states", row, rows, store_type(l), h.data_ptr());
    verify_rows(f, row, rows, {&h}, "hidden_states");
  } else {
    at::Tensor g = out.logits.narrow(0, at, rows);
    f.read_rows("logits", row, rows, h5::Type::f32, g.data_ptr());
    verify_rows(f, row, rows, {&g}, "logits");
  }
}

void check_chunk(const h5::File& f, const CacheLayout& layout, int64_t start, int64_t end) {
  try {
    if (f.string_attribute("fingerprint") != layout.fingerprint)
      cache_fail(f.path(),
                 "fingerprint " + f.string_attribute("fingerprint") + ", the directory is " + layout.fingerprint);
    if (f.int_attribute("format_version") != kTeacherCacheFormat)
      cache_fail(f.path(), "format version " + std::to_string(f.int_attribute("format_version")) + ", expected " +
                               std::to_string(kTeacherCacheFormat));
    if (f.int_attribute("start") != start || f.int_attribute("end") != end)
      cache_fail(f.path(), "holds samples [" + std::to_string(f.int_attribute("start")) + ", " +
                               std::to_string(f.int_attribute("end")) + "), its name says [" + std::to_string(start) +
                               ", " + std::to_string(end) + ")");
    for (const auto& [name, shape] : expected_datasets(layout, end - start)) {
      if (!f.has(name)) cache_fail(f.path(), "missing dataset '" + name + "'");
      const auto info = f.info(name);
      if (info.shape != shape)
        cache_fail(f.path(), "dataset '" + name + "' has shape " + shape_string(info.shape) + ", expected " +
                                 shape_string(shape));
    }
  } catch (const IoError& e) {
    cache_fail(f.path(), e.what());
  }
}

nlohmann::json layout_json(const CacheLayout& l) {
  nlohmann::json j = {{"format_version", kTeacherCacheFormat},
                      {"fingerprint", l.fingerprint},
                      {"kind", std::string(to_string(l.form))},
                      {"samples", l.samples},
                      {"seq_len", l.seq_len},
                      {"top_k", l.top_k},
                      {"vocab_size", l.vocab_size},
                      {"num_labels", l.num_labels},
                      {"store_dtype", std::string(to_string(l.store_dtype))},
                      {"chunk_samples", kCacheChunkSamples}};
  if (l.form == CacheForm::hidden) j["hidden_size"] = l.hidden_size;
  if (l.form == CacheForm::sampled) j["draws"] = l.draws;
  return j;
}

}  // namespace

std::string_view to_string(CacheForm form) { return name_in(kFormNames, form); }
std::string_view to_string(CacheDtype dtype) { return name_in(kDtypeNames, dtype); }
std::optional<CacheForm> cache_form_from_string(std::string_view name) { return value_in(kFormNames, name); }
std::optional<CacheDtype> cache_dtype_from_string(std::string_view name) { return value_in(kDtypeNames, name); }

std::vector<std::pair<int64_t, int64_t>> CacheLayout::chunks() const {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t s = 0; s < samples; s += kCacheChunkSamples)
    out.emplace_back(s, std::min(samples, s + kCacheChunkSamples));
  return out;
}

std::string CacheLayout::chunk_name(int64_t start, int64_t end) {
  return fmt::format("chunk-{:010}-{:010}.h5", start, end);
}

void write_cache_chunk(const fs::path& dir, const CacheLayout& layout, int64_t start, int64_t end,
                       const CacheChunk& c) {
  const fs::path final_path = dir / CacheLayout::chunk_name(start, end);
  // Temporaries of this chunk left by a killed run are garbage (its name is per chunk), but not those another job
  // sharing teacher.cache_root is writing right now: each writer renames its own whole file over the chunk's name.
  const std::string stale_prefix = "." + final_path.filename().string() + ".tmp.";
  for (const auto& e : fs::directory_iterator(dir)) {
    std::error_code ignored;
    if (e.path().filename().string().rfind(stale_prefix, 0) == 0 && abandoned_temp(e.path()))
      fs::remove(e.path(), ignored);
  }
  // Nothing non-finite is ever cached: a NaN from the teacher stops the run here, naming the samples.
  check_values(c, layout,
               "teacher outputs of samples [" + std::to_string(start) + ", " + std::to_string(end) + ") for '" +
                   final_path.string() + "'");
  const fs::path tmp = temp_sibling(final_path);
  try {
    h5::File f = h5::File::create(tmp);
    const int64_t n = end - start;
    HAWADA_ASSERT(c.sample_index.numel() == n, "chunk row count");
    if (layout.form == CacheForm::top_k) {
      const at::Tensor values = c.topk_values.contiguous();
      if (layout.store_dtype == CacheDtype::fp16) {
        HAWADA_ASSERT(values.scalar_type() == at::kHalf, "fp16 values");
        f.write("topk_values", h5::Type::f16, {n, layout.seq_len, layout.top_k}, values.data_ptr());
      } else {
        HAWADA_ASSERT(values.scalar_type() == at::kBFloat16, "bf16 values");
        f.write("topk_values", h5::Type::u16, {n, layout.seq_len, layout.top_k}, values.data_ptr());
      }
      const at::Tensor indices = c.topk_indices.to(at::kInt).contiguous();
      const at::Tensor lse = c.logsumexp.to(at::kFloat).contiguous();
      f.write("topk_indices", h5::Type::i32, {n, layout.seq_len, layout.top_k}, indices.data_ptr());
      f.write("logsumexp", h5::Type::f32, {n, layout.seq_len}, lse.data_ptr());
      f.write("row_xxh64", h5::Type::i64, {n}, row_checksums({&values, &indices, &lse}).data_ptr());
      f.set_attribute("topk_values_dtype", layout.store_dtype == CacheDtype::fp16
                                               ? std::string("float16")
                                               : std::string("bfloat16 (uint16 bits)"));
    } else if (layout.form == CacheForm::sampled) {
      const at::Tensor packed = pack_ids(c.sampled_ids);
      const at::Tensor counts = c.sampled_counts.to(at::kByte).contiguous();
      const at::Tensor entropy = c.entropy.to(at::kFloat).contiguous();
      f.write("sampled_ids", h5::Type::u8, {n, layout.seq_len, layout.draws, 3}, packed.data_ptr());
      f.write("sampled_counts", h5::Type::u8, {n, layout.seq_len, layout.draws}, counts.data_ptr());
      f.write("entropy", h5::Type::f32, {n, layout.seq_len}, entropy.data_ptr());
      f.write("row_xxh64", h5::Type::i64, {n}, row_checksums({&packed, &counts, &entropy}).data_ptr());
      f.set_attribute("sampled_ids_encoding", std::string("uint24 little-endian, 3 x uint8"));
    } else if (layout.form == CacheForm::hidden) {
      const at::Tensor values = c.hidden_states.to(store_scalar(layout)).contiguous();
      f.write("hidden_states", store_type(layout), {n, layout.seq_len, layout.hidden_size}, values.data_ptr());
      f.write("row_xxh64", h5::Type::i64, {n}, row_checksums({&values}).data_ptr());
      f.set_attribute("hidden_states_dtype", layout.store_dtype == CacheDtype::fp16
                                                 ? std::string("float16")
                                                 : std::string("bfloat16 (uint16 bits)"));
    } else {
      const at::Tensor logits = c.logits.to(at::kFloat).contiguous();
      f.write("logits", h5::Type::f32, {n, layout.num_labels}, logits.data_ptr());
      f.write("row_xxh64", h5::Type::i64, {n}, row_checksums({&logits}).data_ptr());
    }
    f.write("sample_index", h5::Type::i64, {n}, c.sample_index.to(at::kLong).contiguous().data_ptr());
    f.set_attribute("fingerprint", layout.fingerprint);
    f.set_attribute("format_version", kTeacherCacheFormat);
    f.set_attribute("start", start);
    f.set_attribute("end", end);
    f.close();
    sync_file(tmp);
    fault_point("teacher_cache.before_rename");  // a slow writer: the chunk is whole on disk, not yet published
    rename_into(tmp, final_path);
  } catch (...) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw;
  }
}

bool cache_chunk_ready(const fs::path& dir, const CacheLayout& layout, int64_t start, int64_t end) {
  const fs::path path = dir / CacheLayout::chunk_name(start, end);
  if (!fs::exists(path)) return false;
  h5::File f = [&] {
    try {
      return h5::File::open_read(path);
    } catch (const IoError& e) {
      cache_fail(path, e.what());
    }
  }();
  check_chunk(f, layout, start, end);
  return true;
}

CacheChunk read_cache_chunk(const fs::path& dir, const CacheLayout& layout, int64_t start, int64_t end) {
  const fs::path path = dir / CacheLayout::chunk_name(start, end);
  if (!fs::exists(path)) cache_fail(path, "missing");
  h5::File f = h5::File::open_read(path);
  check_chunk(f, layout, start, end);
  const int64_t n = end - start;
  CacheChunk c;
  c.sample_index = at::empty({n}, at::kLong);
  f.read_all("sample_index", h5::Type::i64, c.sample_index.data_ptr());
  if (layout.form == CacheForm::top_k) {
    c.topk_values = at::empty({n, layout.seq_len, layout.top_k}, store_scalar(layout));
    c.topk_indices = at::empty({n, layout.seq_len, layout.top_k}, at::kInt);
    c.logsumexp = at::empty({n, layout.seq_len}, at::kFloat);
  } else if (layout.form == CacheForm::sampled) {
    c.sampled_ids = at::empty({n, layout.seq_len, layout.draws}, at::kInt);
    c.sampled_counts = at::empty({n, layout.seq_len, layout.draws}, at::kByte);
    c.entropy = at::empty({n, layout.seq_len}, at::kFloat);
  } else if (layout.form == CacheForm::hidden) {
    c.hidden_states = at::empty({n, layout.seq_len, layout.hidden_size}, store_scalar(layout));
  } else {
    c.logits = at::empty({n, layout.num_labels}, at::kFloat);
  }
  if (layout.form == CacheForm::sampled)
    read_sampled_rows(f, layout, 0, n, c, 0);
  else
    read_plain_rows(f, layout, 0, n, c, 0);
  check_values(c, layout, "'" + path.string() + "'");
  return c;
}

CacheChunk read_cache_samples(const fs::path& dir, const CacheLayout& layout, const std::vector<int64_t>& samples) {
  const int64_t n = static_cast<int64_t>(samples.size());
  CacheChunk c;
  c.sample_index = at::tensor(samples, at::kLong);
  if (layout.form == CacheForm::top_k) {
    c.topk_values = at::empty({n, layout.seq_len, layout.top_k}, store_scalar(layout));
    c.topk_indices = at::empty({n, layout.seq_len, layout.top_k}, at::kInt);
    c.logsumexp = at::empty({n, layout.seq_len}, at::kFloat);
  } else if (layout.form == CacheForm::sampled) {
    c.sampled_ids = at::empty({n, layout.seq_len, layout.draws}, at::kInt);
    c.sampled_counts = at::empty({n, layout.seq_len, layout.draws}, at::kByte);
    c.entropy = at::empty({n, layout.seq_len}, at::kFloat);
  } else if (layout.form == CacheForm::hidden) {
    c.hidden_states = at::empty({n, layout.seq_len, layout.hidden_size}, store_scalar(layout));
  } else {
    c.logits = at::empty({n, layout.num_labels}, at::kFloat);
  }
  // One open (and one check) per chunk file touched; every row read is checked against its checksum.
  std::map<int64_t, h5::File> files;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t sample = samples[static_cast<size_t>(i)];
    if (sample < 0 || sample >= layout.samples)
      cache_fail(dir, "sample " + std::to_string(sample) + " is outside the cache's [0, " +
                          std::to_string(layout.samples) + ")");
    const int64_t start = sample / kCacheChunkSamples * kCacheChunkSamples;
    const int64_t end = std::min(layout.samples, start + kCacheChunkSamples);
    auto it = files.find(start);
    if (it == files.end()) {
      const fs::path path = dir / CacheLayout::chunk_name(start, end);
      if (!fs::exists(path)) cache_fail(path, "missing");
      h5::File f = h5::File::open_read(path);
      check_chunk(f, layout, start, end);
      it = files.emplace(start, std::move(f)).first;
    }
    const h5::File& f = it->second;
    const int64_t row = sample - start;
    if (layout.form == CacheForm::sampled)
      read_sampled_rows(f, layout, row, 1, c, i);
    else
      read_plain_rows(f, layout, row, 1, c, i);
  }
  std::string files_read;
  for (const auto& [start, f] : files) files_read += (files_read.empty() ? "'" : ", '") + f.path().string() + "'";
  check_values(c, layout, files_read);
  return c;
}

void write_cache_index(const fs::path& dir, const CacheLayout& layout) {
  nlohmann::json j = layout_json(layout);
  j["chunks"] = nlohmann::json::array();
  for (const auto& [s, e] : layout.chunks()) {
    if (!cache_chunk_ready(dir, layout, s, e)) cache_fail(dir / CacheLayout::chunk_name(s, e), "missing");
    j["chunks"].push_back({{"file", CacheLayout::chunk_name(s, e)}, {"start", s}, {"end", e}});
  }
  atomic_write_text(dir / "index.json", j.dump(2) + "\n");
}

CacheLayout read_cache_index(const fs::path& dir) {
  const fs::path path = dir / "index.json";
  nlohmann::json j;
  try {
    const std::string text = read_text_file(path);
    if (const std::string deep = json_depth_problem(text); !deep.empty()) cache_fail(path, "index " + deep);
    j = nlohmann::json::parse(text);
    CacheLayout l;
    if (json_int(j.at("format_version")) != kTeacherCacheFormat)
      cache_fail(path, "format version " + json_excerpt(j.at("format_version")) + ", expected " +
                           std::to_string(kTeacherCacheFormat));
    l.fingerprint = j.at("fingerprint").get<std::string>();
    const std::string kind = j.at("kind").get<std::string>();
    l.samples = json_int(j.at("samples"));
    l.seq_len = json_int(j.at("seq_len"));
    l.top_k = json_int(j.at("top_k"));
    l.vocab_size = json_int(j.at("vocab_size"));
    l.num_labels = json_int(j.at("num_labels"));
    const std::string store_dtype = j.at("store_dtype").get<std::string>();
    const std::optional<CacheForm> form = cache_form_from_string(kind);
    if (!form)
      cache_fail(path,
                 "unknown kind '" + kind + "' (written by a newer hawada-pipeline? rerun teacher_cache with this one)");
    l.form = *form;
    const std::optional<CacheDtype> dtype = cache_dtype_from_string(store_dtype);
    if (!dtype)
      cache_fail(path, "unknown store_dtype '" + store_dtype +
                           "' (written by a newer hawada-pipeline? rerun teacher_cache with this one)");
    l.store_dtype = *dtype;
    if (l.form == CacheForm::hidden) l.hidden_size = json_int(j.at("hidden_size"));
    if (l.form == CacheForm::sampled) {
      l.draws = json_int(j.at("draws"));
      if (l.draws < 1 || l.draws > 255) cache_fail(path, "draws must be in [1, 255]");
    }
    if (json_int(j.at("chunk_samples")) != kCacheChunkSamples) cache_fail(path, "unexpected chunk_samples");
    return l;
  } catch (const nlohmann::json::exception& e) {
    cache_fail(path, std::string("malformed index: ") + e.what());
  } catch (const IoError& e) {
    cache_fail(path, e.what());
  }
}

bool cache_complete(const fs::path& dir, const CacheLayout& layout) {
  if (!fs::exists(dir / "index.json")) return false;
  const CacheLayout found = read_cache_index(dir);
  if (layout_json(found) != layout_json(layout))
    cache_fail(dir / "index.json",
               "describes " + layout_json(found).dump() + ", this run expects " + layout_json(layout).dump());
  // A chunk removed after the index was written (e.g. a corrupted one deleted by hand) makes the cache
  // incomplete again: teacher_cache recomputes the missing chunks and rewrites the index.
  for (const auto& [s, e] : layout.chunks())
    if (!cache_chunk_ready(dir, layout, s, e)) return false;
  return true;
}

}  // namespace hawada

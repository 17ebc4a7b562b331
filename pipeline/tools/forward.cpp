#include "pipeline/tools/forward.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include "adapters/adapter.h"
#include "core/base/errors.h"
#include "core/base/log.h"
#include "core/data/h5.h"
#include "core/dist/device.h"
#include "core/io/checkpoint.h"
#include "core/io/safetensors.h"
#include "stages/evaluate.h"

#include <sstream>

#include <nlohmann/json.hpp>

namespace hawada {
namespace {

// Reads the batch from an inputs file, naming the file and tensor in every refusal.
Batch read_batch(const std::filesystem::path& file) {
  const safetensors::Reader in(file);
  auto fail = [&](const std::string& tensor, const std::string& what) {
    throw DataError("inputs file '" + file.string() + "': tensor '" + tensor + "': " + what);
  };
  auto describe = [](const at::Tensor& t) {
    return std::string(c10::toString(t.scalar_type())) + " " + c10::str(t.sizes());
  };
  Batch b;
  if (in.contains("input_ids")) {
    at::Tensor ids = in.tensor("input_ids");
    if (ids.dim() != 2 || (ids.scalar_type() != at::kLong && ids.scalar_type() != at::kInt))
      fail("input_ids", "expected I64 [batch, seq_len], got " + describe(ids));
    b.input_ids = ids.to(at::kLong);
    if (in.contains("attention_mask")) {
      at::Tensor m = in.tensor("attention_mask");
      if (m.sizes() != ids.sizes() || !(at::isIntegralType(m.scalar_type(), /*includeBool=*/true)))
        fail("attention_mask", "expected an integer or bool tensor shaped like input_ids " + c10::str(ids.sizes()) +
                                   ", got " + describe(m));
      b.attention_mask = m.to(at::kLong);
    }
  } else if (in.contains("pixel_values")) {
    at::Tensor px = in.tensor("pixel_values");
    if (px.dim() != 4 || !at::isFloatingType(px.scalar_type()))
      fail("pixel_values", "expected F32 [batch, channels, height, width], got " + describe(px));
    b.pixel_values = px.to(at::kFloat);
  } else {
    throw DataError("inputs file '" + file.string() + "' holds neither 'input_ids' nor 'pixel_values'");
  }
  return b;
}

}  // namespace

void forward_command(const std::filesystem::path& model_dir, const std::filesystem::path& inputs,
                     const std::filesystem::path& output, const std::string& dtype, int threads) {
  if (dtype != "fp32" && dtype != "bf16") throw UsageError("--dtype must be fp32 or bf16, got '" + dtype + "'");
  if (threads > 0) at::set_num_threads(threads);
  const HfCheckpoint ckpt = with_context("loading model: ", [&] { return HfCheckpoint::open(model_dir); });
  const auto config_file = model_dir / "config.json";
  const auto& adapter = adapter_for(ckpt.config(), config_file);
  const auto model = with_context("loading model: ", [&] {
    return adapter.load(ckpt, {dtype == "bf16" ? at::kBFloat16 : at::kFloat, at::kCPU});
  });
  const Batch batch = read_batch(inputs);
  at::NoGradGuard no_grad;
  std::vector<safetensors::NamedTensor> out;
  try {
    for (auto& [name, t] : model->outputs(batch)) out.push_back({name, t.contiguous()});
  } catch (DataError& e) {
    e.add_context("inputs file '" + inputs.string() + "': ");
    throw;
  }
  safetensors::write_file(output, out);
  log::info("wrote " + std::to_string(out.size()) + " output tensor(s) to " + output.string());
}

void export_keep_all_command(const std::filesystem::path& model_dir, const std::filesystem::path& out_dir,
                             std::optional<uint64_t> max_shard_bytes) {
  const HfCheckpoint ckpt = HfCheckpoint::open(model_dir);
  // Loading validates that the weights are what config.json says before anything is written.
  adapter_for(ckpt.config(), model_dir / "config.json").load(ckpt, {.dtype = std::nullopt});
  export_keep_all(ckpt, out_dir, max_shard_bytes);
  log::info("exported " + std::to_string(ckpt.tensor_names().size()) + " tensors unchanged to " + out_dir.string());
}

}  // namespace hawada

namespace hawada {

std::string evaluate_command(const std::filesystem::path& teacher_dir, const std::filesystem::path& student_dir,
                             const EvaluateOptions& o, bool as_json) {
  const HfCheckpoint teacher_ckpt = HfCheckpoint::open(teacher_dir), student_ckpt = HfCheckpoint::open(student_dir);
  const auto teacher_file = teacher_dir / "config.json", student_file = student_dir / "config.json";
  const ModelAdapter& ta = adapter_for(teacher_ckpt.config(), teacher_file);
  const ModelAdapter& sa = adapter_for(student_ckpt.config(), student_file);
  const ArchSummary tarch = ta.summarize(teacher_ckpt.config(), teacher_file);
  const ArchSummary sarch = sa.summarize(student_ckpt.config(), student_file);
  if (tarch.vocab_size != sarch.vocab_size || tarch.num_labels != sarch.num_labels)
    throw UsageError("'" + student_dir.string() + "' and '" + teacher_dir.string() +
                     "' do not share an output space (vocabulary / labels differ)");
  DataSpec spec;
  if (o.format == "tokens_h5")
    spec.format = DataSpec::Format::tokens_h5;
  else if (o.format == "tokens_bin")
    spec.format = DataSpec::Format::tokens_bin;
  else if (o.format == "images_h5")
    spec.format = DataSpec::Format::images_h5;
  else
    throw UsageError("--format must be tokens_h5, tokens_bin or images_h5, got '" + o.format + "'");
  spec.path = o.data;
  spec.seq_len = o.seq_len;
  if (spec.format == DataSpec::Format::tokens_h5 && spec.seq_len == 0) {
    // The file's own window length.
    spec.seq_len = h5::File::open_read(o.data).info("input_ids").shape.at(1);
  }
  if (spec.format == DataSpec::Format::tokens_bin && spec.seq_len == 0)
    throw UsageError("--seq-len is required for --format tokens_bin");
  DataExpectations expect;
  expect.vocab_size = tarch.vocab_size;
  expect.image_size = tarch.image_size;
  const auto data = DataSource::open(spec, expect, read_pixel_normalization(teacher_dir));
  if (o.first >= data->size())
    throw UsageError("--first " + std::to_string(o.first) + " is past the " + std::to_string(data->size()) +
                     " samples of '" + o.data.string() + "'");
  const int64_t count = o.samples > 0 ? std::min(o.samples, data->size() - o.first) : data->size() - o.first;
  const DeviceRequest req = o.device == "cpu"    ? DeviceRequest::cpu
                            : o.device == "cuda" ? DeviceRequest::cuda
                                                 : DeviceRequest::auto_;
  if (o.device != "auto" && o.device != "cpu" && o.device != "cuda")
    throw UsageError("--device must be auto, cpu or cuda, got '" + o.device + "'");
  const at::Device device = pick_device(req, 0, "--device");
  const auto teacher = ta.load(teacher_ckpt, {at::kFloat, device});
  const auto student = sa.load(student_ckpt, {at::kFloat, device});
  nlohmann::json r =
      evaluate_quality(*teacher, *student, *data, o.first, count, device, model_shape(tarch).traits.output);
  r["teacher"] = teacher_dir.string();
  r["student"] = student_dir.string();
  r["data"] = o.data.string();
  r["first_sample"] = o.first;
  if (as_json) return r.dump(2) + "\n";
  std::ostringstream out;
  for (const auto& [k, v] : r.items()) out << k << ": " << v.dump() << "\n";
  return out.str();
}

}  // namespace hawada

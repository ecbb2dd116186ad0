// The per-step host work of the ARGS loop, in C++ with the GIL released, in two parts that mirror the Python
// loop operation for operation (so both give bit-identical tokens):
//   HostChooser (runtime/choice.py:HostChooser): combine the LM's top-k logits with the rewards and choose one
//     candidate per row (greedy, or seeded sampling on numpy's PCG64 stream);
//   Books (runtime/stepper.py:PythonStepper): keep each row's EOS / token-limit state and write the next step's
//     inputs (positions, attention mask) into buffers allocated once.
// Each is built from one config struct, filled from Python by field name.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;
using u128 = unsigned __int128;
using i64 = int64_t;

namespace {

// numpy's PCG64 (XSL-RR 128/64): step the 128-bit LCG, then output from the new state.
struct Pcg64 {
  u128 state = 0, inc = 0;

  uint64_t next64() {
    static const u128 mult = (static_cast<u128>(2549297995355413924ULL) << 64) | 4865540595714422341ULL;
    state = state * mult + inc;
    const uint64_t x = static_cast<uint64_t>(state >> 64) ^ static_cast<uint64_t>(state);
    const unsigned rot = static_cast<unsigned>(state >> 122);
    return (x >> rot) | (x << ((-rot) & 63u));
  }
  // Generator.random(): 53 high bits scaled to [0, 1).
  double random() { return static_cast<double>(next64() >> 11) * (1.0 / 9007199254740992.0); }
};

// numpy's pairwise summation (what ndarray.sum uses along a contiguous axis), so sums round the same way.
double pairwise_sum(const double* a, i64 n) {
  if (n < 8) {
    double res = 0.;
    for (i64 i = 0; i < n; ++i) res += a[i];
    return res;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    i64 i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  i64 n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

template <typename T>
py::array_t<T> checked(const py::array& value, i64 rows, i64 cols, const char* name) {
  auto a = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(value);
  if (!a || a.ndim() != 2 || a.shape(0) != rows || a.shape(1) < cols)
    throw std::invalid_argument(std::string(name) + ": expected a [" + std::to_string(rows) + ", >=" + std::to_string(cols) + "] array");
  return a;
}

}  // namespace

enum Finish : int8_t { kRunning = 0, kEos = 1, kLimit = 2 };

// How HostChooser chooses: k candidates per row of a batch, score = logit + w * reward, greedy or sampled.
struct ChooserConfig {
  i64 batch = 1, k = 1;
  float w = 0.f;
  bool sample = false;
  double temperature = 1.0;
  // numpy's PCG64 state (state, inc), each 128 bits split into 64-bit halves: numpy seeds, C++ continues the stream.
  uint64_t state_hi = 0, state_lo = 0, inc_hi = 0, inc_lo = 0;
};

class HostChooser {
 public:
  explicit HostChooser(const ChooserConfig& c)
      : batch_(c.batch), k_(c.k), w_(c.w), sample_(c.sample), temperature_(c.temperature), scores_(c.k), probs_(c.k) {
    if (batch_ < 1 || k_ < 1) throw std::invalid_argument("HostChooser: batch and k must be >= 1");
    tokens_ = py::array_t<i64>(batch_);
    logits_ = py::array_t<float>(batch_);
    rewards_ = py::array_t<float>(batch_);
    rng_.state = (static_cast<u128>(c.state_hi) << 64) | c.state_lo;
    rng_.inc = (static_cast<u128>(c.inc_hi) << 64) | c.inc_lo;
  }

  // Choose one candidate per row from logits/candidates/rewards [B, >=k]; writes tokens, logits and rewards [B].
  void choose(const py::array& logits_in, const py::array& candidates_in, const py::array& rewards_in) {
    auto logits = checked<float>(logits_in, batch_, k_, "logits");
    auto candidates = checked<i64>(candidates_in, batch_, k_, "candidates");
    auto rewards = checked<float>(rewards_in, batch_, k_, "rewards");
    const float* lp = logits.data();
    const i64* cp = candidates.data();
    const float* rp = rewards.data();
    const i64 lstride = logits.shape(1), cstride = candidates.shape(1), rstride = rewards.shape(1);
    i64* tok = tokens_.mutable_data();
    float* chosen_logit = logits_.mutable_data();
    float* chosen_reward = rewards_.mutable_data();
    py::gil_scoped_release release;
    for (i64 r = 0; r < batch_; ++r) {
      for (i64 j = 0; j < k_; ++j) scores_[j] = lp[r * lstride + j] + w_ * rp[r * rstride + j];
      const i64 pick = sample_ ? sample() : argmax();
      tok[r] = cp[r * cstride + pick];
      chosen_logit[r] = lp[r * lstride + pick];
      chosen_reward[r] = rp[r * rstride + pick];
    }
  }

  // The rng state after the draws so far, as numpy's (state, inc) split into 64-bit halves.
  py::tuple rng_state() const {
    return py::make_tuple(static_cast<uint64_t>(rng_.state >> 64), static_cast<uint64_t>(rng_.state),
                          static_cast<uint64_t>(rng_.inc >> 64), static_cast<uint64_t>(rng_.inc));
  }

  // The last sampled row's cumulative distribution (for tests: it must equal numpy's bit for bit).
  py::array_t<double> last_cdf() const { return py::array_t<double>(k_, probs_.data()); }

  py::array_t<i64> tokens_;
  py::array_t<float> logits_, rewards_;

 private:
  // np.argmax: the first index of the maximum (NaN wins, as in numpy).
  i64 argmax() const {
    i64 best = 0;
    for (i64 j = 1; j < k_; ++j) {
      if (std::isnan(scores_[best])) break;
      if (scores_[j] > scores_[best] || std::isnan(scores_[j])) best = j;
    }
    return best;
  }

  // selection.sample_index: float64 softmax of score / temperature (the C library's exp), cumsum, one draw * cdf[-1],
  // searchsorted right.
  i64 sample() {
    double top = -INFINITY;
    for (i64 j = 0; j < k_; ++j) {
      probs_[j] = static_cast<double>(scores_[j]) / temperature_;
      top = j == 0 ? probs_[j] : std::max(top, probs_[j]);
    }
    for (i64 j = 0; j < k_; ++j) probs_[j] = std::exp(probs_[j] - top);
    const double total = pairwise_sum(probs_.data(), k_);
    double cdf = 0.;
    for (i64 j = 0; j < k_; ++j) probs_[j] = (cdf += probs_[j] / total);
    const double u = rng_.random() * probs_[k_ - 1];
    i64 pick = 0;
    while (pick < k_ && !(u < probs_[pick])) ++pick;  // first index with cdf > u
    return std::min(pick, k_ - 1);
  }

  i64 batch_, k_;
  float w_;
  bool sample_;
  double temperature_;
  std::vector<float> scores_;
  std::vector<double> probs_;
  Pcg64 rng_;
};

// When each row of a batch finishes, and how wide its left-padded mask can grow.
struct BooksConfig {
  std::vector<i64> prompt_lens;  // real tokens per row
  i64 capacity = 0;              // the widest attention mask the generation may need
  std::vector<i64> eos;          // end-of-sequence ids
  bool ignore_eos = false;
  std::vector<i64> limits;  // tokens each row may generate
};

class Books {
 public:
  explicit Books(const BooksConfig& c)
      : batch_(static_cast<i64>(c.prompt_lens.size())), eos_(c.eos), ignore_eos_(c.ignore_eos), limits_(c.limits),
        prompt_lens_(c.prompt_lens), capacity_(c.capacity), counts_(batch_, 0) {
    if (batch_ < 1 || static_cast<i64>(limits_.size()) != batch_) throw std::invalid_argument("Books: bad batch or limits");
    finish_ = py::array_t<int8_t>(batch_);
    positions_ = py::array_t<i64>(std::vector<py::ssize_t>{batch_, 1});
    mask_ = py::array_t<i64>(batch_ * capacity_);
    for (i64 n : prompt_lens_) width_ = std::max(width_, n);
    auto pos = positions_.mutable_unchecked<2>();
    for (i64 r = 0; r < batch_; ++r) pos(r, 0) = prompt_lens_[r];  // rewritten as the next position at each step
  }

  // Record one chosen token per row [B]: finish flags, next positions, the mask one column wider; returns its width.
  i64 advance(const py::array& tokens_in) {
    auto tokens = py::array_t<i64, py::array::c_style | py::array::forcecast>::ensure(tokens_in);
    if (!tokens || tokens.size() != batch_) throw std::invalid_argument("Books: expected " + std::to_string(batch_) + " chosen tokens");
    if (width_ + 1 > capacity_) throw std::invalid_argument("Books: the attention mask would exceed its capacity");
    const i64* tok = tokens.data();
    int8_t* fin = finish_.mutable_data();
    i64* pos = positions_.mutable_data();
    i64* mask = mask_.mutable_data();
    py::gil_scoped_release release;
    for (i64 r = 0; r < batch_; ++r) {
      counts_[r] += 1;
      bool is_eos = false;
      for (i64 e : eos_) is_eos = is_eos || e == tok[r];
      fin[r] = (is_eos && !ignore_eos_) ? kEos : (counts_[r] >= limits_[r] ? kLimit : kRunning);
      pos[r] = prompt_lens_[r] + counts_[r] - 1;
    }
    // Left-padded mask, one more real column per row, laid out contiguously as [B, width].
    width_ += 1;
    for (i64 r = 0; r < batch_; ++r) {
      const i64 pad = width_ - (prompt_lens_[r] + counts_[r]);
      i64* row = mask + r * width_;
      for (i64 c = 0; c < width_; ++c) row[c] = c < pad ? 0 : 1;
    }
    return width_;
  }

  py::array_t<int8_t> finish_;
  py::array_t<i64> positions_;
  py::array_t<i64> mask_;  // flat [B * capacity]; the first B * width entries are the current mask

 private:
  i64 batch_;
  std::vector<i64> eos_;
  bool ignore_eos_;
  std::vector<i64> limits_, prompt_lens_;
  i64 capacity_, width_ = 0;
  std::vector<i64> counts_;
};

PYBIND11_MODULE(_steploop, m) {
  m.doc() = "args-rt C++ step loop: ARGS per-step host work with the GIL released (bit-identical to the Python loop)";
  py::class_<ChooserConfig>(m, "ChooserConfig")
      .def(py::init<>())
      .def_readwrite("batch", &ChooserConfig::batch)
      .def_readwrite("k", &ChooserConfig::k)
      .def_readwrite("w", &ChooserConfig::w)
      .def_readwrite("sample", &ChooserConfig::sample)
      .def_readwrite("temperature", &ChooserConfig::temperature)
      .def_readwrite("state_hi", &ChooserConfig::state_hi)
      .def_readwrite("state_lo", &ChooserConfig::state_lo)
      .def_readwrite("inc_hi", &ChooserConfig::inc_hi)
      .def_readwrite("inc_lo", &ChooserConfig::inc_lo);
  py::class_<HostChooser>(m, "HostChooser")
      .def(py::init<const ChooserConfig&>(), py::arg("config"))
      .def("choose", &HostChooser::choose, py::arg("logits"), py::arg("candidates"), py::arg("rewards"))
      .def("rng_state", &HostChooser::rng_state)
      .def("last_cdf", &HostChooser::last_cdf)
      .def_readonly("tokens", &HostChooser::tokens_)
      .def_readonly("logits", &HostChooser::logits_)
      .def_readonly("rewards", &HostChooser::rewards_);
  py::class_<BooksConfig>(m, "BooksConfig")
      .def(py::init<>())
      .def_readwrite("prompt_lens", &BooksConfig::prompt_lens)
      .def_readwrite("capacity", &BooksConfig::capacity)
      .def_readwrite("eos", &BooksConfig::eos)
      .def_readwrite("ignore_eos", &BooksConfig::ignore_eos)
      .def_readwrite("limits", &BooksConfig::limits);
  py::class_<Books>(m, "Books")
      .def(py::init<const BooksConfig&>(), py::arg("config"))
      .def("advance", &Books::advance, py::arg("tokens"))
      .def_readonly("finish", &Books::finish_)
      .def_readonly("positions", &Books::positions_)
      .def_readonly("mask", &Books::mask_);
}

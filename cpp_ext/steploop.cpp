// The per-step host work of the ARGS loop, in C++ with the GIL released, in two parts that mirror the Python
// loop operation for operation (so both give bit-identical tokens):
//   HostChooser (runtime/choice.py:HostChooser): combine the LM's top-k logits with the rewards and choose one
//     candidate per row, each row by its own settings (greedy, or seeded sampling on its own copy of numpy's PCG64);
//   Books (runtime/books.py:Books): keep each row's EOS / token-limit state and write the next step's inputs (ids,
//     positions, cache columns, attention mask) into buffers allocated once.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <algorithm>
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
  if (!a || a.ndim() != 2 || a.shape(0) < rows || a.shape(1) < cols)
    throw std::invalid_argument(std::string(name) + ": expected a [" + std::to_string(rows) + ", >=" + std::to_string(cols) + "] array");
  return a;
}

}  // namespace

enum Finish : int8_t { kRunning = 0, kEos = 1, kLimit = 2 };

// How one row chooses (runtime/choice.py:ChoiceConfig): among its first k candidates, score = logit + w * reward,
// greedy or sampled at `temperature` from its own PCG64 stream.
struct RowChoice {
  i64 k = 1;
  float w = 0.f;
  bool sample = false;
  double temperature = 1.0;
  Pcg64 rng;
};

// runtime/choice.py:HostChooser: each row of [0, span) chooses by its own RowChoice.
class HostChooser {
 public:
  explicit HostChooser(i64 rows) : rows_(rows), choices_(rows) {
    if (rows_ < 1) throw std::invalid_argument("HostChooser: rows must be >= 1");
    tokens_ = py::array_t<i64>(rows_);
    logits_ = py::array_t<float>(rows_);
    rewards_ = py::array_t<float>(rows_);
  }

  // Row `row` chooses among its first k with weight w, greedy or sampled; `state`: numpy's PCG64 (state, inc), each
  // 128 bits split into 64-bit halves (numpy seeds, C++ continues the stream).
  void seat(i64 row, i64 k, float w, bool sample, double temperature, std::tuple<uint64_t, uint64_t, uint64_t, uint64_t> state) {
    check_row(row);
    if (k < 1) throw std::invalid_argument("HostChooser: k must be >= 1");
    RowChoice& c = choices_[row];
    c.k = k, c.w = w, c.sample = sample, c.temperature = temperature;
    c.rng.state = (static_cast<u128>(std::get<0>(state)) << 64) | std::get<1>(state);
    c.rng.inc = (static_cast<u128>(std::get<2>(state)) << 64) | std::get<3>(state);
  }

  void move(i64 source, i64 target) {
    check_row(source), check_row(target);
    choices_[target] = choices_[source];
    choices_[source] = RowChoice();
  }

  // Choose one candidate for each row of [start, stop) from logits/candidates/rewards [>= stop - start, >= k] (their
  // rows in order); writes tokens, logits and rewards (the first stop - start entries).
  void choose(const py::array& logits_in, const py::array& candidates_in, const py::array& rewards_in, i64 start, i64 stop) {
    if (start < 0 || stop <= start || stop > rows_) throw std::invalid_argument("HostChooser: rows must be a run within 0 .. " + std::to_string(rows_));
    const i64 span = stop - start;
    i64 k_max = 1;
    for (i64 r = start; r < stop; ++r) k_max = std::max(k_max, choices_[r].k);
    auto logits = checked<float>(logits_in, span, k_max, "logits");
    auto candidates = checked<i64>(candidates_in, span, k_max, "candidates");
    auto rewards = checked<float>(rewards_in, span, k_max, "rewards");
    const float* lp = logits.data();
    const i64* cp = candidates.data();
    const float* rp = rewards.data();
    const i64 lstride = logits.shape(1), cstride = candidates.shape(1), rstride = rewards.shape(1);
    i64* tok = tokens_.mutable_data();
    float* chosen_logit = logits_.mutable_data();
    float* chosen_reward = rewards_.mutable_data();
    scores_.resize(k_max);
    probs_.resize(k_max);
    py::gil_scoped_release release;
    for (i64 r = 0; r < span; ++r) {
      RowChoice& c = choices_[start + r];
      for (i64 j = 0; j < c.k; ++j) scores_[j] = lp[r * lstride + j] + c.w * rp[r * rstride + j];
      const i64 pick = c.sample ? sample(c) : argmax(c.k);
      tok[r] = cp[r * cstride + pick];
      chosen_logit[r] = lp[r * lstride + pick];
      chosen_reward[r] = rp[r * rstride + pick];
    }
  }

  // A row's rng state after the draws so far, as numpy's (state, inc) split into 64-bit halves.
  py::tuple rng_state(i64 row) const {
    check_row(row);
    const Pcg64& rng = choices_[row].rng;
    return py::make_tuple(static_cast<uint64_t>(rng.state >> 64), static_cast<uint64_t>(rng.state),
                          static_cast<uint64_t>(rng.inc >> 64), static_cast<uint64_t>(rng.inc));
  }

  // The last sampled row's cumulative distribution (for tests: it must equal numpy's bit for bit).
  py::array_t<double> last_cdf() const { return py::array_t<double>(last_k_, probs_.data()); }

  py::array_t<i64> tokens_;
  py::array_t<float> logits_, rewards_;

 private:
  void check_row(i64 row) const {
    if (row < 0 || row >= rows_) throw std::invalid_argument("HostChooser: row " + std::to_string(row) + " is not in 0 .. " + std::to_string(rows_ - 1));
  }

  // np.argmax over the first k scores: the first index of the maximum (NaN wins, as in numpy).
  i64 argmax(i64 k) const {
    i64 best = 0;
    for (i64 j = 1; j < k; ++j) {
      if (std::isnan(scores_[best])) break;
      if (scores_[j] > scores_[best] || std::isnan(scores_[j])) best = j;
    }
    return best;
  }

  // selection.sample_index: float64 softmax of score / temperature (the C library's exp), cumsum, one draw * cdf[-1],
  // searchsorted right.
  i64 sample(RowChoice& c) {
    const i64 k = c.k;
    double top = -INFINITY;
    for (i64 j = 0; j < k; ++j) {
      probs_[j] = static_cast<double>(scores_[j]) / c.temperature;
      top = j == 0 ? probs_[j] : std::max(top, probs_[j]);
    }
    for (i64 j = 0; j < k; ++j) probs_[j] = std::exp(probs_[j] - top);
    const double total = pairwise_sum(probs_.data(), k);
    double cdf = 0.;
    for (i64 j = 0; j < k; ++j) probs_[j] = (cdf += probs_[j] / total);
    last_k_ = k;
    const double u = c.rng.random() * probs_[k - 1];
    i64 pick = 0;
    while (pick < k && !(u < probs_[pick])) ++pick;  // first index with cdf > u
    return std::min(pick, k - 1);
  }

  i64 rows_, last_k_ = 0;
  std::vector<RowChoice> choices_;
  std::vector<float> scores_;
  std::vector<double> probs_;
};

// runtime/books.py:Books: per row, its count, limit and ignore_eos, the next input (id, position, cache column) and
// the attention mask over the cache, in buffers allocated once and shared with numpy.
class Books {
 public:
  Books(i64 rows, i64 context, std::vector<i64> eos)
      : rows_(rows), context_(context), eos_(std::move(eos)), counts_(rows, 0), limits_(rows, 0), ignore_eos_(rows, 0), seated_(rows, 0) {
    if (rows_ < 1 || context_ < 1) throw std::invalid_argument("Books: rows and context must be >= 1");
    mask_ = py::array_t<i64>(std::vector<py::ssize_t>{rows_, context_});
    next_ids_ = py::array_t<i64>(std::vector<py::ssize_t>{rows_, 1});
    positions_ = py::array_t<i64>(std::vector<py::ssize_t>{rows_, 1});
    columns_ = py::array_t<i64>(std::vector<py::ssize_t>{rows_, 1});
    finish_ = py::array_t<int8_t>(rows_);
    for (i64 r = 0; r < rows_; ++r) release(r);
    std::fill(finish_.mutable_data(), finish_.mutable_data() + rows_, kRunning);
  }

  void seat(i64 row, i64 prompt_len, i64 first_column, i64 limit, bool ignore_eos) {
    check_row(row);
    if (prompt_len < 1 || first_column < 0 || first_column + prompt_len > context_)
      throw std::invalid_argument("Books: a prompt of " + std::to_string(prompt_len) + " tokens at column " + std::to_string(first_column) +
                                  " does not fit " + std::to_string(context_) + " columns");
    i64* mask = mask_.mutable_data() + row * context_;
    for (i64 c = 0; c < context_; ++c) mask[c] = c >= first_column && c < first_column + prompt_len;
    positions_.mutable_data()[row] = prompt_len - 1;
    columns_.mutable_data()[row] = first_column + prompt_len - 1;
    counts_[row] = 0, limits_[row] = limit, ignore_eos_[row] = ignore_eos, seated_[row] = 1;
  }

  void release(i64 row) {
    check_row(row);
    i64* mask = mask_.mutable_data() + row * context_;
    for (i64 c = 0; c < context_; ++c) mask[c] = c == 0;
    next_ids_.mutable_data()[row] = positions_.mutable_data()[row] = columns_.mutable_data()[row] = 0;
    counts_[row] = limits_[row] = 0, ignore_eos_[row] = seated_[row] = 0;
  }

  void move(i64 source, i64 target) {
    check_row(source), check_row(target);
    i64* mask = mask_.mutable_data();
    std::copy(mask + source * context_, mask + (source + 1) * context_, mask + target * context_);
    for (i64* a : {next_ids_.mutable_data(), positions_.mutable_data(), columns_.mutable_data()}) a[target] = a[source];
    counts_[target] = counts_[source], limits_[target] = limits_[source];
    ignore_eos_[target] = ignore_eos_[source], seated_[target] = seated_[source];
    release(source);
  }

  // Book one chosen token per row of [start, stop) (tokens in that order): count it, flag EOS and limits, make it
  // the seated rows' next input.
  void step(const py::array& tokens_in, i64 start, i64 stop) {
    auto tokens = py::array_t<i64, py::array::c_style | py::array::forcecast>::ensure(tokens_in);
    if (start < 0 || stop <= start || stop > rows_) throw std::invalid_argument("Books: rows must be a run within 0 .. " + std::to_string(rows_));
    if (!tokens || tokens.size() < stop - start) throw std::invalid_argument("Books: expected " + std::to_string(stop - start) + " chosen tokens");
    const i64* tok = tokens.data();  // tok[r - start]: row r's token
    int8_t* fin = finish_.mutable_data();
    i64 *ids = next_ids_.mutable_data(), *pos = positions_.mutable_data(), *col = columns_.mutable_data(), *mask = mask_.mutable_data();
    for (i64 r = start; r < stop; ++r)
      if (seated_[r] && col[r] + 1 >= context_)
        throw std::invalid_argument("Books: a row has no cache column left (the context is " + std::to_string(context_) + "): its limit was not kept");
    py::gil_scoped_release release;
    for (i64 r = start; r < stop; ++r) {
      if (!seated_[r]) {
        fin[r] = kRunning;
        continue;
      }
      counts_[r] += 1;
      bool is_eos = false;
      for (i64 e : eos_) is_eos = is_eos || e == tok[r - start];
      fin[r] = (is_eos && !ignore_eos_[r]) ? kEos : (counts_[r] >= limits_[r] ? kLimit : kRunning);
      ids[r] = tok[r - start];
      pos[r] += 1;
      col[r] += 1;
      mask[r * context_ + col[r]] = 1;
    }
  }

  py::array_t<i64> mask_, next_ids_, positions_, columns_;
  py::array_t<int8_t> finish_;

 private:
  void check_row(i64 row) const {
    if (row < 0 || row >= rows_) throw std::invalid_argument("Books: row " + std::to_string(row) + " is not in 0 .. " + std::to_string(rows_ - 1));
  }

  i64 rows_, context_;
  std::vector<i64> eos_;
  std::vector<i64> counts_, limits_;
  std::vector<char> ignore_eos_, seated_;
};

PYBIND11_MODULE(_steploop, m) {
  m.doc() = "args-rt C++ step loop: ARGS per-step host work with the GIL released (bit-identical to the Python loop)";
  py::class_<HostChooser>(m, "HostChooser")
      .def(py::init<i64>(), py::arg("rows"))
      .def("seat", &HostChooser::seat, py::arg("row"), py::arg("k"), py::arg("w"), py::arg("sample"), py::arg("temperature"), py::arg("state"))
      .def("move", &HostChooser::move, py::arg("source"), py::arg("target"))
      .def("choose", &HostChooser::choose, py::arg("logits"), py::arg("candidates"), py::arg("rewards"), py::arg("start"), py::arg("stop"))
      .def("rng_state", &HostChooser::rng_state, py::arg("row"))
      .def("last_cdf", &HostChooser::last_cdf)
      .def_readonly("tokens", &HostChooser::tokens_)
      .def_readonly("logits", &HostChooser::logits_)
      .def_readonly("rewards", &HostChooser::rewards_);
  py::class_<Books>(m, "Books")
      .def(py::init<i64, i64, std::vector<i64>>(), py::arg("rows"), py::arg("context"), py::arg("eos"))
      .def("seat", &Books::seat, py::arg("row"), py::arg("prompt_len"), py::arg("first_column"), py::arg("limit"), py::arg("ignore_eos"))
      .def("release", &Books::release, py::arg("row"))
      .def("move", &Books::move, py::arg("source"), py::arg("target"))
      .def("step", &Books::step, py::arg("tokens"), py::arg("start"), py::arg("stop"))
      .def_readonly("mask", &Books::mask_)
      .def_readonly("next_ids", &Books::next_ids_)
      .def_readonly("positions", &Books::positions_)
      .def_readonly("columns", &Books::columns_)
      .def_readonly("finish", &Books::finish_);
}

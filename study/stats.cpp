#include "study/stats.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

namespace kvmscale::study {

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Quantile with linear interpolation between order statistics (sorted input).
double quantile_sorted(const std::vector<double>& s, double q) {
  double pos = q * double(s.size() - 1);
  size_t i = size_t(pos);
  if (i + 1 >= s.size()) return s.back();
  return s[i] + (pos - double(i)) * (s[i + 1] - s[i]);
}
}  // namespace

double median(std::vector<double> v) {
  if (v.empty()) return kNaN;
  size_t n = v.size(), mid = n / 2;
  std::nth_element(v.begin(), v.begin() + long(mid), v.end());
  double hi = v[mid];
  if (n % 2) return hi;
  double lo = *std::max_element(v.begin(), v.begin() + long(mid));
  return (lo + hi) / 2;
}

Interval bootstrap_ratio_ci(const std::vector<double>& a, const std::vector<double>& b,
                            double confidence, int resamples, uint64_t seed) {
  if (a.empty() || b.empty() || resamples < 1) return {kNaN, kNaN};
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<size_t> pick_a(0, a.size() - 1), pick_b(0, b.size() - 1);
  std::vector<double> ratios, ra(a.size()), rb(b.size());
  ratios.reserve(size_t(resamples));
  for (int i = 0; i < resamples; i++) {
    for (auto& x : ra) x = a[pick_a(rng)];
    for (auto& x : rb) x = b[pick_b(rng)];
    double ma = median(ra), mb = median(rb);
    if (ma == 0) {
      if (mb == 0)
        ratios.push_back(1.0);  // 0/0: no change
      else
        return {kNaN, kNaN};  // the ratio is unbounded
    } else {
      ratios.push_back(mb / ma);
    }
  }
  std::sort(ratios.begin(), ratios.end());
  double tail = (1 - confidence) / 2;
  return {quantile_sorted(ratios, tail), quantile_sorted(ratios, 1 - tail)};
}

MannWhitney mann_whitney(const std::vector<double>& a, const std::vector<double>& b) {
  const size_t m = a.size(), n = b.size();
  if (m == 0 || n == 0) return {kNaN, kNaN, false};
  // Ranks of the pooled sample, ties get their mean rank.
  std::vector<std::pair<double, int>> all;
  for (double x : a) all.push_back({x, 0});
  for (double x : b) all.push_back({x, 1});
  std::sort(all.begin(), all.end());
  std::vector<double> rank(all.size());
  double tie_term = 0;  // sum of t^3 - t over tie groups
  bool ties = false;
  for (size_t i = 0; i < all.size();) {
    size_t j = i;
    while (j < all.size() && all[j].first == all[i].first) j++;
    double r = (double(i + 1) + double(j)) / 2;
    for (size_t k = i; k < j; k++) rank[k] = r;
    double t = double(j - i);
    if (t > 1) ties = true;
    tie_term += t * t * t - t;
    i = j;
  }
  double rank_sum_a = 0;
  for (size_t k = 0; k < all.size(); k++)
    if (all[k].second == 0) rank_sum_a += rank[k];
  const double u = rank_sum_a - double(m) * double(m + 1) / 2;
  const double mean = double(m) * double(n) / 2;

  if (!ties && m * n <= 10000) {
    // Exact null distribution of U: count[k] = arrangements with U = k, built by adding one
    // observation at a time (c(m, n, k) = c(m-1, n, k-n) + c(m, n-1, k)).
    const size_t maxu = m * n;
    std::vector<std::vector<double>> prev(n + 1), cur(n + 1);
    for (size_t j = 0; j <= n; j++) prev[j] = {1.0};  // m = 0: U is always 0
    for (size_t i = 1; i <= m; i++) {
      cur[0] = {1.0};
      for (size_t j = 1; j <= n; j++) {
        std::vector<double> c(i * j + 1, 0.0);
        for (size_t k = 0; k < cur[j - 1].size(); k++) c[k] += cur[j - 1][k];
        for (size_t k = 0; k < prev[j].size(); k++) c[k + j] += prev[j][k];
        cur[j] = std::move(c);
      }
      std::swap(prev, cur);
    }
    const std::vector<double>& count = prev[n];
    double total = 0;
    for (double c : count) total += c;
    // Two-sided: twice the smaller tail at the observed U.
    double lo_u = std::min(u, double(maxu) - u), tail = 0;
    for (size_t k = 0; k <= size_t(lo_u) && k < count.size(); k++) tail += count[k];
    return {u, std::min(1.0, 2 * tail / total), true};
  }
  const double N = double(m + n);
  const double var = double(m) * double(n) / 12 * ((N + 1) - tie_term / (N * (N - 1)));
  if (var <= 0) return {u, 1.0, false};                     // every value equal
  double z = (std::fabs(u - mean) - 0.5) / std::sqrt(var);  // continuity correction
  if (z < 0) z = 0;
  return {u, std::erfc(z / std::sqrt(2.0)), false};
}

}  // namespace kvmscale::study

// Statistics for comparing two sets of runs: medians, a bootstrap confidence interval of the
// ratio of medians, and the Mann-Whitney U test (exact for small samples without ties).
#pragma once

#include <cstdint>
#include <vector>

namespace kvmscale::study {

double median(std::vector<double> v);  // NaN when empty

struct Interval {
  double lo, hi;  // NaN when undefined (e.g. a zero median in the denominator)
};

// Percentile bootstrap of median(b) / median(a): `resamples` draws of each sample with
// replacement, deterministic for a given seed.
Interval bootstrap_ratio_ci(const std::vector<double>& a, const std::vector<double>& b,
                            double confidence = 0.95, int resamples = 10000, uint64_t seed = 1);

struct MannWhitney {
  double u;    // U statistic of sample a (pairs where a > b, ties count 1/2)
  double p;    // two-sided p-value
  bool exact;  // exact permutation distribution (no ties, small samples) or normal approx.
};
MannWhitney mann_whitney(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace kvmscale::study

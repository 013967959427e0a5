// gnuplot plots of a matrix: one figure per metric, the median over repetitions with min-max
// error bars, x = #VMs (or another numeric axis), one line per combination of the other axes.
// When every axis is categorical (e.g. --vcpu-pin none,1:1), grouped bars: one cluster per value
// of the first axis, one bar per combination of the others.
#pragma once

#include <string>
#include <vector>

#include "study/matrix.hpp"

namespace kvmscale::study {

// The metrics plotted when present: boot time, call-lock wait, flush latency, balance
// try-locks and failures, scheduler overhead, guest throughput.
const std::vector<std::string>& plotted_metrics();

// A gnuplot string expression that reads back as exactly `s` (any bytes but NUL, where gnuplot
// ends a string) and that gnuplot cannot expand: the one way a value reaches a .gp script.
std::string gnuplot_string(const std::string& s);

// Writes <metric>.dat and <metric>.gp into `plot_dir` and renders PNG and SVG with gnuplot.
// Returns warnings (gnuplot missing or failing, a metric name that is no plain file name); the
// data and scripts are written regardless. The .dat files hold numbers only; every label and
// path is in the .gp script as a gnuplot_string.
std::vector<std::string> write_plots(const MatrixSpec& spec, const std::vector<RunRow>& rows,
                                     const std::string& plot_dir);

}  // namespace kvmscale::study

#include "study/plots.hpp"

#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "app/record.hpp"
#include "study/metrics.hpp"
#include "study/stats.hpp"

extern char** environ;

namespace kvmscale::study {

namespace fs = std::filesystem;

const std::vector<std::string>& plotted_metrics() {
  static const std::vector<std::string> list = {
      "boot_max_ms",       "boot_p50_ms",      "call_lock_wait_ms",        "flush_avg_us",
      "fault_stall_ms",    "balance_trylocks", "balance_trylock_failures", "balance_us",
      "sched_overhead_pct"};
  return list;
}

namespace {

bool numeric(const std::string& s) {
  if (s.empty()) return false;
  char* end = nullptr;
  std::strtod(s.c_str(), &end);
  return end && *end == '\0';
}

// The x axis: "vms" when it varies, else the first all-numeric axis, else the first axis
// (categorical); -1 when there are no axes (one point).
int pick_x_axis(const MatrixSpec& spec) {
  for (size_t i = 0; i < spec.axes.size(); i++)
    if (spec.axes[i].flag == "vms") return int(i);
  for (size_t i = 0; i < spec.axes.size(); i++)
    if (std::all_of(spec.axes[i].values.begin(), spec.axes[i].values.end(), numeric)) return int(i);
  return spec.axes.empty() ? -1 : 0;
}

std::string gp_quote(const std::string& s) {
  std::string q = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') q += '\\';
    q += c;
  }
  return q + "\"";
}

std::string file_tail(const std::string& path, size_t n) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return {};
  std::streamoff size = in.tellg();
  if (size <= 0) return {};
  std::streamoff from = size > std::streamoff(n) ? size - std::streamoff(n) : 0;
  in.seekg(from);
  std::string tail(size_t(size - from), '\0');
  in.read(tail.data(), std::streamsize(tail.size()));
  return in ? tail : std::string();
}

// A PNG ends with its IEND chunk; an SVG with its closing tag.
bool complete_png(const std::string& path) {
  return file_tail(path, 8) == std::string("IEND\xae\x42\x60\x82", 8);
}
bool complete_svg(const std::string& path) {
  return file_tail(path, 64).find("</svg>") != std::string::npos;
}

// Renders into *.part files (names passed with -e) that the caller renames on success.
int run_gnuplot(const std::string& script, const std::string& metric, std::string& error) {
  const std::string vars =
      "png_out=" + gp_quote(metric + ".png.part") + "; svg_out=" + gp_quote(metric + ".svg.part");
  const char* argv[] = {"gnuplot", "-e", vars.c_str(), script.c_str(), nullptr};
  pid_t pid;
  int rc = posix_spawnp(&pid, "gnuplot", nullptr, nullptr, const_cast<char**>(argv), environ);
  if (rc != 0) {
    error = "gnuplot not found (install gnuplot-nox): wrote the data and scripts only";
    return -1;
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    error = "gnuplot failed on " + script;
    return -1;
  }
  return 0;
}

}  // namespace

std::vector<std::string> write_plots(const MatrixSpec& spec, const std::vector<RunRow>& rows,
                                     const std::string& plot_dir) {
  fs::create_directories(plot_dir);
  const int x = pick_x_axis(spec);
  const bool x_numeric = x >= 0 && std::all_of(spec.axes[size_t(x)].values.begin(),
                                               spec.axes[size_t(x)].values.end(), numeric);
  const std::string x_flag = x >= 0 ? spec.axes[size_t(x)].flag : "";
  auto series_of = [&](const RunRow& r) {
    std::string s;
    for (const auto& a : spec.axes)
      if (a.flag != x_flag) s += (s.empty() ? "" : " ") + a.flag + "=" + r.values.at(a.flag);
    return s.empty() ? std::string("all runs") : s;
  };
  // Series in first-seen order of the canonical cell order, x values in axis order.
  std::vector<std::string> series, series_of_row;  // labels, and each row's label (built once)
  for (const auto& r : rows) {
    series_of_row.push_back(series_of(r));
    if (std::find(series.begin(), series.end(), series_of_row.back()) == series.end())
      series.push_back(series_of_row.back());
  }
  const std::vector<std::string> xs =
      x >= 0 ? spec.axes[size_t(x)].values : std::vector<std::string>{"run"};

  std::vector<std::string> metrics = plotted_metrics();
  for (const auto& m : metric_columns(rows))
    if (m.rfind("guest_", 0) == 0) metrics.push_back(m);  // throughput

  std::vector<std::string> warnings;
  for (const auto& metric : metrics) {
    std::ostringstream dat;
    dat << "# " << metric << ": x, median, min, max, x label, runs; one block per series\n";
    bool any = false;
    for (const auto& s : series) {
      dat << "# " << s << "\n";
      for (size_t xi = 0; xi < xs.size(); xi++) {
        std::vector<double> v;
        for (size_t ri = 0; ri < rows.size(); ri++) {
          const RunRow& r = rows[ri];
          if (series_of_row[ri] != s || (x >= 0 && r.values.at(x_flag) != xs[xi])) continue;
          auto it = r.metrics.find(metric);
          if (it != r.metrics.end()) v.push_back(it->second);
        }
        if (v.empty()) {
          // Bars of one category line up by row: a series without this category gets a gap.
          if (!x_numeric) dat << xi << " ? ? ? " << gp_quote(xs[xi]) << " 0\n";
          continue;
        }
        any = true;
        auto [mn, mx] = std::minmax_element(v.begin(), v.end());
        dat << (x_numeric ? xs[xi] : std::to_string(xi)) << " " << median(v) << " " << *mn << " "
            << *mx << " " << gp_quote(xs[xi]) << " " << v.size() << "\n";
      }
      dat << "\n\n";
    }
    if (!any) continue;
    const MetricInfo info = metric_info(metric);
    const std::string base = (fs::path(plot_dir) / metric).string();
    app::write_file_atomically(base + ".dat", dat.str());
    std::ostringstream gp;
    gp << "# generated by kvmscale matrix; run: gnuplot " << metric << ".gp\n"
       << "set title " << gp_quote(info.description.empty() ? metric : info.description) << "\n"
       << "set xlabel " << gp_quote(x_flag.empty() ? "run" : "--" + x_flag) << "\n"
       << "set ylabel " << gp_quote(metric + (info.unit.empty() ? "" : " (" + info.unit + ")"))
       << "\nset key below\nset grid\nset yrange [0:*]\nset offsets 0.3, 0.3, 0, 0\n";
    if (x_numeric) {
      // Tics at the measured x values; a log2 axis for doubling series such as 1,2,4,..,64.
      gp << "set xtics (";
      bool pow2 = true;
      double lo = 1e300, hi = 0;
      for (size_t i = 0; i < xs.size(); i++) {
        double v = std::strtod(xs[i].c_str(), nullptr);
        pow2 = pow2 && v >= 1 && (uint64_t(v) & (uint64_t(v) - 1)) == 0 && v == double(uint64_t(v));
        lo = std::min(lo, v);
        hi = std::max(hi, v);
        gp << (i ? ", " : "") << xs[i];
      }
      gp << ")\n";
      if (pow2 && hi >= 4 * lo) gp << "set logscale x 2\nset offsets 0, 0, 0, 0\n";
      gp << "set style data yerrorlines\n";
    } else {
      // Categories are not a scale: grouped bars (one cluster per category, one bar per series)
      // with min-max error bars, so equal series stay visible side by side.
      gp << "set datafile missing \"?\"\nset style data histograms\n"
         << "set style histogram errorbars gap 1 linewidth 1\n"
         << "set style fill solid 0.5 border -1\nset boxwidth 0.9\nset offsets 0, 0, 0, 0\n";
    }
    std::ostringstream plot;
    plot << "plot ";
    for (size_t i = 0; i < series.size(); i++) {
      plot << (i ? ", \\\n     " : "") << gp_quote(metric + ".dat") << " index " << i
           << (x_numeric ? " using 1:2:3:4" : " using 2:3:4:xtic(5)") << " title "
           << gp_quote(series[i]) << (x_numeric ? " pointtype 7 linewidth 2" : "");
    }
    plot << "\n";
    gp << "cd " << gp_quote(fs::absolute(plot_dir).string()) << "\n"
       << "if (!exists(\"png_out\")) png_out = " << gp_quote(metric + ".png") << "\n"
       << "if (!exists(\"svg_out\")) svg_out = " << gp_quote(metric + ".svg") << "\n"
       << "set terminal pngcairo size 1000,600 noenhanced\nset output "
       << "png_out\n"
       << plot.str() << "set terminal svg size 1000,600 noenhanced\nset output "
       << "svg_out\n"
       << plot.str() << "unset output\n";
    app::write_file_atomically(base + ".gp", gp.str());
    std::string err;
    if (run_gnuplot(base + ".gp", metric, err) != 0) {
      // Never leave half-written images behind.
      for (const char* ext : {".png.part", ".svg.part"}) fs::remove(base + ext);
      warnings.push_back(err);
      if (err.find("not found") != std::string::npos) break;
      continue;
    }
    // gnuplot exits 0 even when it could not write everything (a full disk): check that both
    // images are complete before they replace anything.
    if (!complete_png(base + ".png.part") || !complete_svg(base + ".svg.part")) {
      for (const char* ext : {".png.part", ".svg.part"}) fs::remove(base + ext);
      warnings.push_back("gnuplot wrote incomplete images for " + metric +
                         " (disk full?): left out");
      continue;
    }
    for (const char* ext : {".png", ".svg"}) fs::rename(base + ext + ".part", base + ext);
  }
  return warnings;
}

}  // namespace kvmscale::study

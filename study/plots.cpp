#include "study/plots.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "app/record.hpp"
#include "app/text.hpp"
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
  if (s.empty() || std::isspace(static_cast<unsigned char>(s[0]))) return false;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  return end && *end == '\0' && std::isfinite(v);
}

// A number as the .dat and .gp files hold it: never the axis value's own text.
std::string number(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.15g", v);
  return b;
}

// A metric names its files: a plain name only (a guest's metric names are [A-Za-z0-9_.-]).
bool plain_file_name(const std::string& s) {
  return !s.empty() && s[0] != '.' &&
         s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") ==
             std::string::npos;
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

// Renders into *.part files (names passed with -e) that the caller renames on success. gnuplot's
// messages quote the script, values and all, so they go to a pipe, not to the terminal: the last
// line of a failure is in `error`, printed like every message (app::printable).
int run_gnuplot(const std::string& script, const std::string& metric, std::string& error) {
  const std::string vars = "png_out=" + gnuplot_string(metric + ".png.part") +
                           "; svg_out=" + gnuplot_string(metric + ".svg.part");
  const char* argv[] = {"gnuplot", "-e", vars.c_str(), script.c_str(), nullptr};
  int err_pipe[2];
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    error = "gnuplot: pipe: " + std::string(std::strerror(errno));
    return -1;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, err_pipe[1], 2);
  pid_t pid;
  int rc = posix_spawnp(&pid, "gnuplot", &fa, nullptr, const_cast<char**>(argv), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(err_pipe[1]);
  if (rc != 0) {
    ::close(err_pipe[0]);
    error = "gnuplot not found (install gnuplot-nox): wrote the data and scripts only";
    return -1;
  }
  std::string messages;
  char buf[4096];
  for (ssize_t n; (n = ::read(err_pipe[0], buf, sizeof buf)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    messages.append(buf, size_t(n));
    if (messages.size() > 65536) messages.erase(0, messages.size() - 65536);  // the end matters
  }
  ::close(err_pipe[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    while (!messages.empty() && messages.back() == '\n') messages.pop_back();
    const size_t last = messages.rfind('\n');
    error =
        "gnuplot failed on " + script +
        (messages.empty() ? "" : ": " + messages.substr(last == std::string::npos ? 0 : last + 1));
    return -1;
  }
  return 0;
}

}  // namespace

// gnuplot runs `...` inside double-quoted strings as a shell command, also when a user renders a
// script by hand; a single-quoted string is taken as it stands up to the next quote. A quote or a
// control byte (a raw newline would end the command) is joined in as a double-quoted octal
// escape, which holds no backquote: "it's\n" becomes 'it'."\047".'s'."\012". (Doubling a quote
// is no way to write one: gnuplot 5.4 reads three quotes as an empty string and what follows as
// unquoted, backquotes and all.)
std::string gnuplot_string(const std::string& s) {
  std::string out;
  char open = 0;  // the quote of the part being written
  for (char c : s) {
    const bool escaped = static_cast<unsigned char>(c) < 0x20 || c == 0x7f || c == '\'';
    const char quote = escaped ? '"' : '\'';
    if (open != quote) {
      if (open) out += std::string(1, open) + ".";
      out += quote;
      open = quote;
    }
    if (escaped) {
      char octal[5];
      std::snprintf(octal, sizeof octal, "\\%03o", static_cast<unsigned char>(c));
      out += octal;
    } else {
      out += c;
    }
  }
  return open ? out + open : "''";
}

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

  std::vector<std::string> warnings;
  std::vector<std::string> metrics = plotted_metrics();
  for (const auto& m : metric_columns(rows)) {
    if (m.rfind("guest_", 0) != 0) continue;  // throughput
    if (plain_file_name(m))
      metrics.push_back(m);
    else
      warnings.push_back("metric '" + app::printable(m) +
                         "' is no plain file name ([A-Za-z0-9_.-]): not plotted");
  }

  for (const auto& metric : metrics) {
    std::ostringstream dat;
    dat << "# " << metric << ": x, median, min, max, runs; one block per series\n";
    bool any = false;
    for (const auto& s : series) {
      dat << "# " << app::printable(s) << "\n";
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
          if (!x_numeric) dat << xi << " ? ? ? 0\n";
          continue;
        }
        any = true;
        auto [mn, mx] = std::minmax_element(v.begin(), v.end());
        dat << (x_numeric ? number(std::strtod(xs[xi].c_str(), nullptr)) : std::to_string(xi))
            << " " << median(v) << " " << *mn << " " << *mx << " " << v.size() << "\n";
      }
      dat << "\n\n";
    }
    if (!any) continue;
    const MetricInfo info = metric_info(metric);
    const std::string base = (fs::path(plot_dir) / metric).string();
    app::write_file_atomically(base + ".dat", dat.str());
    std::ostringstream gp;
    gp << "# generated by kvmscale matrix; run: gnuplot " << metric << ".gp\n"
       << "set title " << gnuplot_string(info.description.empty() ? metric : info.description)
       << "\nset xlabel " << gnuplot_string(x_flag.empty() ? "run" : "--" + x_flag) << "\n"
       << "set ylabel "
       << gnuplot_string(metric + (info.unit.empty() ? "" : " (" + info.unit + ")"))
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
        gp << (i ? ", " : "") << number(v);
      }
      gp << ")\n";
      if (pow2 && hi >= 4 * lo) gp << "set logscale x 2\nset offsets 0, 0, 0, 0\n";
      gp << "set style data yerrorlines\n";
    } else {
      // Categories are not a scale: grouped bars (one cluster per category, one bar per series)
      // with min-max error bars, so equal series stay visible side by side.
      gp << "set xtics (";
      for (size_t i = 0; i < xs.size(); i++)
        gp << (i ? ", " : "") << gnuplot_string(xs[i]) << " " << i;
      gp << ")\n";
      gp << "set datafile missing '?'\nset style data histograms\n"
         << "set style histogram errorbars gap 1 linewidth 1\n"
         << "set style fill solid 0.5 border -1\nset boxwidth 0.9\nset offsets 0, 0, 0, 0\n";
    }
    std::ostringstream plot;
    plot << "plot ";
    for (size_t i = 0; i < series.size(); i++) {
      plot << (i ? ", \\\n     " : "") << gnuplot_string(metric + ".dat") << " index " << i
           << (x_numeric ? " using 1:2:3:4" : " using 2:3:4") << " title "
           << gnuplot_string(series[i]) << (x_numeric ? " pointtype 7 linewidth 2" : "");
    }
    plot << "\n";
    gp << "cd " << gnuplot_string(fs::absolute(plot_dir).string()) << "\n"
       << "if (!exists('png_out')) png_out = " << gnuplot_string(metric + ".png") << "\n"
       << "if (!exists('svg_out')) svg_out = " << gnuplot_string(metric + ".svg") << "\n"
       << "set terminal pngcairo size 1000,600 noenhanced\nset output "
       << "png_out\n"
       << plot.str() << "set terminal svg size 1000,600 noenhanced\nset output "
       << "svg_out\n"
       << plot.str() << "unset output\n";
    app::write_file_atomically(base + ".gp", gp.str());
    std::string err;
    if (run_gnuplot(fs::absolute(base + ".gp").string(), metric, err) != 0) {
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

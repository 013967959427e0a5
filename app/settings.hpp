// The one description of a run's settings. Each entry names the flag, the record's config key, how
// the flag's text is read into RunConfig, and how a matrix axis splits a list of values. The `run`
// flags (app/cli.cpp), RunConfig's JSON both ways (app/config.cpp) and the matrix's axes
// (study/matrix.cpp) are all generated from this table: adding a setting is one entry in
// app/settings.cpp (plus its RunConfig field and its use).
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "app/config.hpp"

namespace kvmscale::app {

// How `kvmscale matrix` splits a flag's text into axis values.
enum class AxisSplit {
  None,        // not an axis (where the record goes, how it is printed)
  Commas,      // "a,b,c" (or "a;b;c") is three values
  Whole,       // the text is one value (a list itself: --guest-arg, --vm)
  LockPolicy,  // commas, unless a part is CLASS=NAME: "call=mcs,runq=ticket" is one policy
  PcpuList,    // commas, unless every part is a number: "0,1" is one pCPU list
};

struct Setting {
  std::string flag;  // without the dashes
  std::string key;   // in the record's "config"
  std::string help;
  std::string default_text;        // shown by --help; empty: none shown
  std::string type_name = "TEXT";  // shown by --help: UINT, SIZE, DURATION, TEXT
  enum class Arity { One, Flag, Repeated, CommaList } arity = Arity::One;
  AxisSplit axis = AxisSplit::Commas;
  bool required_in_json = false;  // records always had it
  // Reads the flag's values (one, or several for Repeated/CommaList; "true" for a Flag) into the
  // config. Throws ConfigError; the caller prefixes the flag.
  std::function<void(RunConfig&, const std::vector<std::string>&)> parse;
  std::function<nlohmann::json(const RunConfig&)> to_json;
  // Reads the key; a key absent from an old record takes `legacy` when it is not null, else
  // the default.
  std::function<void(RunConfig&, const nlohmann::json&)> from_json;
  nlohmann::json legacy;
  std::string example;  // a value other than the default (tests read it through the table)

  // For writing the table: count(...).required().example("8").
  Setting required() && { return required_in_json = true, std::move(*this); }
  Setting legacy_value(nlohmann::json v) && { return legacy = std::move(v), std::move(*this); }
  Setting axis_split(AxisSplit a) && { return axis = a, std::move(*this); }
  Setting eg(std::string x) && { return example = std::move(x), std::move(*this); }
};

const std::vector<Setting>& run_settings();
// The entry of `flag` (without dashes), or null.
const Setting* find_setting(const std::string& flag);

}  // namespace kvmscale::app

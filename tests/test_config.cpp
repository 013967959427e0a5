#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "app/cli.hpp"
#include "app/config.hpp"
#include "app/settings.hpp"
#include "study/matrix.hpp"

using namespace kvmscale::app;

TEST(ParseSize, UnitsAreBinary) {
  EXPECT_EQ(parse_size("4096"), 4096u);
  EXPECT_EQ(parse_size("4K"), 4096u);
  EXPECT_EQ(parse_size("16M"), 16ull << 20);
  EXPECT_EQ(parse_size("16mib"), 16ull << 20);
  EXPECT_EQ(parse_size("1G"), 1ull << 30);
  EXPECT_EQ(parse_size("1.5G"), 3ull << 29);
}

TEST(ParseSize, RejectsGarbage) {
  for (const char* bad : {"", "M", "-1M", "12Q", "1.2.3M", "0.5", "99999999999T", "1e3"})
    EXPECT_THROW(parse_size(bad), ConfigError) << bad;
}

TEST(ParseDuration, Units) {
  EXPECT_EQ(parse_duration_ns("5s"), 5000000000ull);
  EXPECT_EQ(parse_duration_ns("5"), 5000000000ull);
  EXPECT_EQ(parse_duration_ns("250ms"), 250000000ull);
  EXPECT_EQ(parse_duration_ns("10us"), 10000ull);
  EXPECT_EQ(parse_duration_ns("2m"), 120000000000ull);
  EXPECT_EQ(parse_duration_ns("0.5s"), 500000000ull);
  for (const char* bad : {"", "s", "5x", "-3s", "1e9ns"})
    EXPECT_THROW(parse_duration_ns(bad), ConfigError) << bad;
}

TEST(Format, RoundTrips) {
  EXPECT_EQ(format_size(16ull << 20), "16M");
  EXPECT_EQ(format_size(4097), "4097");
  EXPECT_EQ(parse_size(format_size(3ull << 30)), 3ull << 30);
  EXPECT_EQ(format_duration(1500000), "1.5ms");
}

TEST(RunConfig, DefaultIsValid) { EXPECT_NO_THROW(RunConfig{}.validate()); }

// An explicit --fault-threads goes as far as the default does (PodRuntime's 1024).
TEST(RunConfig, FaultThreadsTakeOneTo1024) {
  RunConfig c;
  for (uint32_t n : {1u, 64u, 65u, 1024u}) {
    c.fault_threads = n;
    EXPECT_NO_THROW(c.validate()) << n;
  }
}

TEST(RunConfig, RejectsEachBadField) {
  auto expect_bad = [](auto mutate, const char* needle) {
    RunConfig c;
    mutate(c);
    try {
      c.validate();
      ADD_FAILURE() << "accepted: " << needle;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_bad([](RunConfig& c) { c.vms = 0; }, "--vms");
  expect_bad([](RunConfig& c) { c.vcpus = 65; }, "--vcpus");
  expect_bad([](RunConfig& c) { c.fault_threads = 1025; }, "--fault-threads");
  expect_bad([](RunConfig& c) { c.mem = 4ull << 20; }, "--mem");
  expect_bad([](RunConfig& c) { c.mem = 8ull << 30; }, "--mem");
  expect_bad([](RunConfig& c) { c.mem = (16ull << 20) + 4096; }, "multiple of 2M");
  expect_bad([](RunConfig& c) { c.guest = "nosuch"; }, "unknown --guest 'nosuch'");
  expect_bad([](RunConfig& c) { c.guest = "hello,,spin"; }, "unknown --guest ''");
  expect_bad([](RunConfig& c) { c.guest_args.assign(9, 1); }, "--guest-arg");
  expect_bad([](RunConfig& c) { c.duration_ns = 10; }, "--duration");
  expect_bad([](RunConfig& c) { c.sched = "cfs"; }, "--sched");
  expect_bad([](RunConfig& c) { c.pod_reclaim = "lazy"; }, "--pod-reclaim");
}

TEST(RunConfig, GuestListIsRoundRobin) {
  RunConfig c;
  c.guest = "crash,hello";
  EXPECT_EQ(c.guest_for_vm(0), "crash");
  EXPECT_EQ(c.guest_for_vm(1), "hello");
  EXPECT_EQ(c.guest_for_vm(2), "crash");
  c.guest_file = "/tmp/x.bin";
  EXPECT_EQ(c.guest_for_vm(1), "file:/tmp/x.bin") << "--guest-file is --guest file:PATH";
  c.guest_file.clear();
  c.guest = "hello,file:/tmp/x.bin";
  EXPECT_EQ(c.guest_for_vm(3), "file:/tmp/x.bin");
}

TEST(RunConfig, JsonRoundTripIsExact) {
  RunConfig c;
  c.vms = 7;
  c.vcpus = 3;
  c.mem = 32ull << 20;
  c.guest = "spin,idle";
  c.guest_args = {1, 2, 3};
  c.duration_ns = 1234567890;
  c.json = true;
  c.pod_reclaim = "batched";
  RunConfig d = RunConfig::from_json(c.to_json());
  EXPECT_EQ(d.to_json(), c.to_json());
}

TEST(RunConfig, RecordsFromBeforePodReclaimReRunBatched) {
  auto j = RunConfig{}.to_json();
  EXPECT_EQ(j["pod_reclaim"], "xen") << "4.7's rule is the default";
  j.erase("pod_reclaim");
  EXPECT_EQ(RunConfig::from_json(j).pod_reclaim, "batched") << "what those runs did";
}

TEST(RunConfig, FromJsonValidates) {
  auto j = RunConfig{}.to_json();
  j["vcpus"] = 0;
  EXPECT_THROW(RunConfig::from_json(j), ConfigError);
  j.erase("vcpus");
  EXPECT_THROW(RunConfig::from_json(j), ConfigError);
  EXPECT_THROW(RunConfig::from_json(nlohmann::json::array()), ConfigError);
}

// Found by fuzz_run_flags: a number without digits threw std::invalid_argument ("kvmscale: stod",
// exit 1), hundreds of digits std::out_of_range; both must be usage errors.
TEST(ConfigParse, NumbersWithoutDigitsOrOutOfRangeAreUsageErrors) {
  for (const std::string& bad : {std::string("."), std::string(".x"), std::string(".ratelimit"),
                                 std::string(400, '9'), std::string(400, '9') + "M"})
    EXPECT_THROW(parse_size(bad), ConfigError) << bad;
  for (const std::string& bad : {std::string("."), std::string(".ms"), std::string(400, '9') + "s"})
    EXPECT_THROW(parse_duration_ns(bad), ConfigError) << bad;
  EXPECT_EQ(parse_size(".5K"), 512u);
  EXPECT_EQ(parse_duration_ns("1.5s"), 1500000000u);
}

TEST(ConfigParse, GuestArgumentsAreExactSixtyFourBitIntegers) {
  EXPECT_EQ(parse_u64("9007199254740993"), 9007199254740993ull) << "not rounded through a double";
  EXPECT_EQ(parse_u64("18446744073709551615"), ~0ull);
  EXPECT_EQ(parse_u64("0xffffffffffffffff"), ~0ull);
  EXPECT_EQ(parse_u64("0x10"), 16u);
  EXPECT_EQ(parse_u64("0"), 0u);
  for (const char* bad :
       {"", "x", "0x", "-1", "1e3", "1.5", "18446744073709551616", "12abc", " 1", "0x1g", "8M"})
    EXPECT_THROW(parse_u64(bad), ConfigError) << "'" << bad << "'";
}

TEST(RunConfig, SettingsARunWouldIgnoreAreNamed) {
  RunConfig c;
  c.sched = "host";
  c.pcpus = 2;
  c.vcpu_pin = "1:1";
  c.cap = 50;
  auto w = c.ineffective_settings();
  auto names = [&](const std::string& flag) {
    return std::any_of(w.begin(), w.end(),
                       [&](const std::string& s) { return s.rfind(flag + " ", 0) == 0; });
  };
  EXPECT_TRUE(names("--pcpus"));
  EXPECT_TRUE(names("--vcpu-pin"));
  EXPECT_TRUE(names("--cap"));
  EXPECT_FALSE(names("--balance"));
  c.sched = "credit";
  c.pcpus = 1;
  EXPECT_TRUE(c.ineffective_settings().empty()) << "credit uses them all";
  c.sched = "rr";
  c.cap = 50;
  w = c.ineffective_settings();
  EXPECT_TRUE(names("--cap")) << "rr has no credits";
  // More pCPU threads than host CPUs: accepted (the limit is 4096), but said to time-share.
  c.sched = "credit";
  c.cap = 0;
  c.pcpus = 4096;
  w = c.ineffective_settings();
  ASSERT_TRUE(names("--pcpus")) << "4096 pCPUs on this host";
  EXPECT_NE(w[0].find("time-share"), std::string::npos) << w[0];
}

TEST(RunConfig, AVmSettingGivenTwiceIsRefused) {
  RunConfig c;
  c.vms = 2;
  c.vm_opts = {"vm0:weight=512", "vm0:weight=128"};
  EXPECT_THROW(c.validate(), ConfigError);
  c.vm_opts = {"vm0:weight=512", "vm0:cap=50", "vm1:weight=128"};
  EXPECT_NO_THROW(c.validate());
}

// A run setting is one entry of the settings table: its flag reads into its RunConfig field, the
// record's config carries it under its key, and reading the record back restores it.
TEST(Settings, EachEntryReadsItsFlagAndRoundTripsThroughTheRecord) {
  const nlohmann::json defaults = RunConfig{}.to_json();
  for (const Setting& s : run_settings()) {
    SCOPED_TRACE("--" + s.flag);
    ASSERT_FALSE(s.example.empty()) << "every entry gives an example value";
    RunConfig c;
    s.parse(c, s.arity == Setting::Arity::CommaList ? split_list(s.example)
                                                    : std::vector<std::string>{s.example});
    const nlohmann::json j = c.to_json();
    EXPECT_NE(j.at(s.key), defaults.at(s.key)) << "the flag did not reach its field";
    RunConfig d;
    s.from_json(d, j.at(s.key));
    EXPECT_EQ(d.to_json(), j);
  }
}

// The record's config keys are the table's, and nothing else; axes split by the table's rules.
TEST(Settings, RecordKeysAndAxisRulesComeFromTheTable) {
  std::set<std::string> keys;
  for (const Setting& s : run_settings()) EXPECT_TRUE(keys.insert(s.key).second) << s.key;
  std::set<std::string> record_keys;
  const nlohmann::json record_config = RunConfig{}.to_json();
  for (const auto& [k, v] : record_config.items()) record_keys.insert(k);
  EXPECT_EQ(record_keys, keys);
  EXPECT_EQ(kvmscale::study::split_axis("lock", "call=mcs,runq=ticket").size(), 1u);
  EXPECT_EQ(kvmscale::study::split_axis("vcpu-pin", "none,1:1").size(), 2u);
  EXPECT_EQ(kvmscale::study::split_axis("guest-arg", "1,2").size(), 1u);
}

// A value a flag cannot take names the flag.
TEST(Settings, ABadValueNamesItsFlag) {
  auto message = [](std::vector<std::string> args) {
    try {
      kvmscale::app::parse_run_args(args);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_EQ(message({"--vms", "abc"}).rfind("--vms: ", 0), 0u) << message({"--vms", "abc"});
  EXPECT_EQ(message({"--tslice", "3 parsecs"}).rfind("--tslice: ", 0), 0u);
  EXPECT_EQ(message({"--lock-profile", "maybe"}).rfind("--lock-profile: ", 0), 0u);
  EXPECT_EQ(message({"--guest-arg", "1,x"}).rfind("--guest-arg: ", 0), 0u);
  EXPECT_EQ(message({"--vms", "8", "--guest-arg", "1,0x10"}), "accepted");
}

// A boolean flag given a value keeps it: --numa=false is off (CLI11 accepts =false on flags).
TEST(Settings, ABooleanFlagGivenFalseIsOff) {
  RunConfig c = kvmscale::app::parse_run_args({"--sched", "credit", "--pcpu-bind=false"});
  EXPECT_FALSE(c.pcpu_bind);
  c = kvmscale::app::parse_run_args({"--sched", "credit", "--pcpu-bind"});
  EXPECT_TRUE(c.pcpu_bind);
  EXPECT_FALSE(kvmscale::app::parse_run_args({"--json=false"}).json);
}

// The record's config keys, pinned: a key renamed or dropped by accident breaks every older
// record's resume and compare. Keys missing from older records read back as what those runs did.
TEST(Settings, RecordConfigKeysArePinnedAndOldRecordsReadAsTheyRan) {
  const std::set<std::string> pinned = {"vms",
                                        "vcpus",
                                        "mem",
                                        "guest",
                                        "guest_file",
                                        "guest_args",
                                        "duration_ns",
                                        "sched",
                                        "pcpus",
                                        "pcpu_bind",
                                        "numa",
                                        "vcpu_pin",
                                        "balance",
                                        "tslice_ns",
                                        "ratelimit_ns",
                                        "weight",
                                        "cap",
                                        "vm_opts",
                                        "pod_target",
                                        "pod_granule",
                                        "sweep_stride",
                                        "sweep_limit",
                                        "pod_reclaim",
                                        "call_lock",
                                        "fault_threads",
                                        "lock",
                                        "lock_profile",
                                        "out",
                                        "json",
                                        "echo_console",
                                        "migration_delay_ns",
                                        "procs"};
  std::set<std::string> keys;
  const nlohmann::json j = RunConfig{}.to_json();
  for (const auto& [k, v] : j.items()) keys.insert(k);
  EXPECT_EQ(keys, pinned);
  nlohmann::json old = j;
  for (const char* k : {"pod_reclaim", "fault_threads", "migration_delay_ns", "procs"})
    old.erase(k);
  RunConfig r = RunConfig::from_json(old);
  EXPECT_EQ(r.pod_reclaim, "batched");
  EXPECT_EQ(r.fault_threads, 1u) << "one fault thread before --fault-threads 0 existed";
  EXPECT_EQ(r.migration_delay_ns, 0u);
  EXPECT_EQ(r.procs, "1") << "one process before --procs existed";
}

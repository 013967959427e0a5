// Text from outside (file and directory names, values of records and matrix.json, flags, guest
// metric names) shown on a terminal: printed so that it cannot drive the terminal.
#pragma once

#include <streambuf>
#include <string>
#include <string_view>

namespace kvmscale::app {

// `s` with every control byte (C0, DEL, and C1 as UTF-8), byte that is not part of valid UTF-8,
// shown as \xNN; printable ASCII and valid UTF-8 stay as they are. `keep_lines` keeps '\n' and
// '\t' (a message of several lines, a table); a name alone has them escaped too.
std::string printable(std::string_view s, bool keep_lines = false);

// A stream buffer passing everything through printable(..., true) to another one.
class PrintableStreambuf : public std::streambuf {
 public:
  explicit PrintableStreambuf(std::streambuf* to) : to_(to) {}

 protected:
  int overflow(int c) override;
  std::streamsize xsputn(const char* s, std::streamsize n) override;
  int sync() override { return to_->pubsync(); }

 private:
  std::streambuf* to_;
};

// While alive, std::cerr goes through printable(): the messages of every layer, whatever names
// they quote, reach the terminal without control sequences (cli_main holds one).
class PrintableStderr {
 public:
  PrintableStderr();
  ~PrintableStderr();
  PrintableStderr(const PrintableStderr&) = delete;
  PrintableStderr& operator=(const PrintableStderr&) = delete;

 private:
  PrintableStreambuf buf_;
  std::streambuf* old_;
};

}  // namespace kvmscale::app

#include "app/text.hpp"

#include <cstdio>
#include <iostream>

namespace kvmscale::app {

namespace {

// The length of the UTF-8 sequence starting at s[i] if it is valid and no C1 control (U+0080 to
// U+009F, e.g. CSI), else 0. Overlong forms, surrogates and code points past U+10FFFF are invalid.
size_t utf8_length(std::string_view s, size_t i) {
  auto at = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = at(0);
  const size_t n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
  if (c < 0xc2 || c > 0xf4 || i + n > s.size()) return 0;
  for (size_t k = 1; k < n; k++)
    if ((at(k) & 0xc0) != 0x80) return 0;
  const unsigned char c1 = at(1);
  if ((c == 0xc2 && c1 < 0xa0) || (c == 0xe0 && c1 < 0xa0) || (c == 0xed && c1 > 0x9f) ||
      (c == 0xf0 && c1 < 0x90) || (c == 0xf4 && c1 > 0x8f))
    return 0;
  return n;
}

}  // namespace

std::string printable(std::string_view s, bool keep_lines) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if ((c >= 0x20 && c < 0x7f) || (keep_lines && (c == '\n' || c == '\t'))) {
      out += char(c);
      i++;
    } else if (size_t n = c >= 0x80 ? utf8_length(s, i) : 0) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
      i++;
    }
  }
  return out;
}

int PrintableStreambuf::overflow(int c) {
  if (c == traits_type::eof()) return traits_type::not_eof(c);
  const char ch = traits_type::to_char_type(c);
  return xsputn(&ch, 1) == 1 ? c : traits_type::eof();
}

// Each write is escaped on its own: a name is always inside one write, and a UTF-8 character cut
// between two writes is shown escaped rather than passed raw.
std::streamsize PrintableStreambuf::xsputn(const char* s, std::streamsize n) {
  const std::string text = printable(std::string_view(s, size_t(n)), true);
  return to_->sputn(text.data(), std::streamsize(text.size())) == std::streamsize(text.size()) ? n
                                                                                               : 0;
}

PrintableStderr::PrintableStderr() : buf_(std::cerr.rdbuf()), old_(std::cerr.rdbuf(&buf_)) {}
PrintableStderr::~PrintableStderr() { std::cerr.rdbuf(old_); }

}  // namespace kvmscale::app

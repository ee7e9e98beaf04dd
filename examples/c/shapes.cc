// A tiny C++ program whose traced names come out demangled:
// `geo::Circle::scale(int)`, `geo::Circle::area() const`,
// `geo::total_area(std::vector<geo::Circle, std::allocator<geo::Circle> > const&)`.
//
//   LD_PRELOAD=liblivetrace.so ./shapes trace.txt     # graph-traces geo::*
#include <cstdio>
#include <vector>

#include "livetrace.h"

// Weak, so the program also runs (untraced) without liblivetrace.so.
#pragma weak lt_last_error
#pragma weak lt_trace_start
#pragma weak lt_trace_stop
#pragma weak lt_trace_write
#pragma weak lt_session_free

#if defined(__clang__)
#define NOINLINE __attribute__((noinline))
#else
#define NOINLINE __attribute__((noinline, noipa))
#endif

namespace geo {

class Circle {
  public:
    explicit Circle(double r) : r_(r) {}
    NOINLINE double area() const { return 3.14159265358979 * r_ * r_; }
    NOINLINE void scale(int factor) { r_ *= factor; }

  private:
    double r_;
};

NOINLINE double total_area(const std::vector<Circle> &cs)
{
    double t = 0;
    for (const Circle &c : cs)
        t += c.area();
    return t;
}

} // namespace geo

int main(int argc, char **argv)
{
    const char *out = argc > 1 ? argv[1] : "shapes.txt";
    if (!lt_trace_start) {
        std::fprintf(stderr, "shapes: liblivetrace.so is not loaded (run with LD_PRELOAD)\n");
        return 77;
    }
    lt_session *s = lt_trace_start("graph", "geo::*");
    if (!s) {
        std::fprintf(stderr, "shapes: %s\n", lt_last_error());
        return 1;
    }
    std::vector<geo::Circle> cs;
    for (int i = 1; i <= 3; i++)
        cs.emplace_back(i);
    cs[0].scale(2);
    double a = geo::total_area(cs);
    lt_trace_stop(s);
    long n = lt_trace_write(s, out, "text");
    lt_session_free(s);
    std::printf("area=%.3f events=%ld\n", a, n);
    return n > 0 ? 0 : 1;
}

// C++ functions with sites, to check demangled names.
namespace shapes {
__attribute__((noinline)) int area(int w, int h) { return w * h; }

struct Circle {
    int r;
    __attribute__((noinline)) long perimeter_x100() const;
};
long Circle::perimeter_x100() const { return 628L * r; }
} // namespace shapes

extern "C" int shapes_area(int w, int h) { return shapes::area(w, h); }

#!/usr/bin/env bash
# Charts the table of scripts/bench_echo.sh with gnuplot (Debian: gnuplot-nox).
#
#   scripts/bench_chart.sh BUILD_DIR/bench-echo.txt [OUT.png]
#
# Writes OUT.png (default: the table's path with .png) next to the table:
#   left:   rows 1-4, echoed messages per second per server (log scale);
#   middle: rows 5-6, idle bytes per connection and CPU us per handshake
#           (lower is better; log scale);
#   right:  row 7, client side: duplex bench vs the Node ws client against
#           the same duplex serve, msgs/s and client CPU us per message.
# Reads only the text table, so it can chart an old one again. A "-" in the
# table (a skipped server, a failed run) is left out of the chart.
set -euo pipefail

table=${1:?usage: bench_chart.sh TABLE.txt [OUT.png]}
out=${2:-${table%.txt}.png}
command -v gnuplot >/dev/null || { echo "bench_chart: gnuplot not installed (apt-get install gnuplot-nox)" >&2; exit 2; }
[[ -r $table ]] || { echo "bench_chart: cannot read $table" >&2; exit 2; }

work=$(mktemp -d /tmp/bench-chart.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The value column of each server in each section. Server names are left
# aligned in a fixed-width first column (14 characters; 16 in row 7).
awk -v dir="$work" '
  function val(s) { return (s ~ /^[0-9.]+$/) ? s : "NaN" }
  /^== / { row = 0 }
  /^== [0-9]+\./ { row = $2; sub(/\./, "", row); next }
  /^(server|client) / { next }
  row >= 1 && row <= 6 && length($0) > 15 {
    name = substr($0, 1, 14); gsub(/ +$/, "", name)
    split(substr($0, 15), f, " ")
    if (name == "duplex" || name == "libwebsockets" || name == "node ws" || name == "tcp_echo")
      v[row, name] = val(f[1])
  }
  row == 7 && length($0) > 17 {
    name = substr($0, 1, 16); gsub(/ +$/, "", name)
    split(substr($0, 17), f, " ")
    if (name == "duplex bench" || name == "node ws client") { c[name, "v"] = val(f[1]); c[name, "us"] = val(f[6]) }
  }
  /^$/ { if (row == 7) row = 0 }
  END {
    split("duplex|libwebsockets|node ws|tcp_echo", s, "|")
    split("1: 16 B d16|2: 16 B d64|3: 16 B d1|4: 64 KiB d2", lab, "|")
    f1 = dir "/rows14.dat"; f2 = dir "/rows56.dat"; f3 = dir "/row7.dat"
    for (r = 1; r <= 4; r++) {
      printf "\"%s\"", lab[r] > f1
      for (i = 1; i <= 4; i++) printf " %s", ((r, s[i]) in v ? v[r, s[i]] : "NaN") > f1
      printf "\n" > f1
    }
    split("5: bytes/idle conn|6: us/handshake", lab2, "|")
    for (r = 5; r <= 6; r++) {
      printf "\"%s\"", lab2[r - 4] > f2
      for (i = 1; i <= 4; i++) printf " %s", ((r, s[i]) in v ? v[r, s[i]] : "NaN") > f2
      printf "\n" > f2
    }
    printf "\"duplex bench\" %s %s\n", (("duplex bench", "v") in c ? c["duplex bench", "v"] : "NaN"), \
      (("duplex bench", "us") in c ? c["duplex bench", "us"] : "NaN") > f3
    printf "\"node ws client\" %s %s\n", (("node ws client", "v") in c ? c["node ws client", "v"] : "NaN"), \
      (("node ws client", "us") in c ? c["node ws client", "us"] : "NaN") > f3
  }' "$table"

title=$(head -1 "$table" | sed 's/"/\\"/g')
gnuplot <<EOF
set terminal png size 1500,520 font ",10"
set output "$out"
set multiplot layout 1,3 title "$title"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key below
set datafile missing "NaN"
set xtics rotate by -20 scale 0
set logscale y
set format y "10^{%L}"
set title "echoed messages/s (higher is better)"
plot "$work/rows14.dat" using 2:xtic(1) title "duplex", '' using 3 title "libwebsockets", \
     '' using 4 title "node ws", '' using 5 title "tcp\\\\_echo (ceiling)"
set title "server cost (lower is better)"
plot "$work/rows56.dat" using 2:xtic(1) title "duplex", '' using 3 title "libwebsockets", \
     '' using 4 title "node ws", '' using 5 title "tcp\\\\_echo"
unset logscale y
set format y "%g"
set title "client side vs duplex serve: msgs/s (bars), client CPU us/msg (points)"
set ytics nomirror
set y2tics
set ylabel "msgs/s"
set y2label "client us/msg"
set yrange [0:*]
set y2range [0:*]
set xrange [-0.6:1.6]
set boxwidth 0.5
set style data boxes
plot "$work/row7.dat" using 0:2:xtic(1) with boxes title "msgs/s", \
     '' using 0:3 axes x1y2 with points pt 7 ps 2 title "client CPU us/msg"
unset multiplot
EOF
echo "bench_chart: wrote $out" >&2

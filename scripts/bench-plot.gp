# bench-plot.gp - the chart of scripts/bench --plot FILE.png.
#
# scripts/bench calls it as
#   gnuplot -e "rpsfile='A'; cpufile='B'; outfile='C.png'" scripts/bench-plot.gp
# rpsfile: one line per scenario row: "label" direct twemproxy sidepool-w1 sidepool-w2
#          (median req/s; NaN where a target did not run)
# cpufile: one line per non-pipelined request and target: "label" backend proxy
#          (median CPU µs per request)

if (!exists("rpsfile") || !exists("cpufile") || !exists("outfile")) {
    print "usage: gnuplot -e \"rpsfile='..'; cpufile='..'; outfile='..'\" bench-plot.gp"
    exit
}

set terminal pngcairo size 1200,1000 font "DejaVu Sans,10" noenhanced
set output outfile
set multiplot layout 2,1

set style data histograms
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top right
set datafile missing "NaN"

# 1. requests per second, every scenario, log scale (pipelined is ~10x the rest)
set title "Requests per second (median; connect GET: direct/twemproxy over TCP, sidepool over its unix socket)"
set style histogram clustered gap 1
set logscale y
set ylabel "req/s"
set xtics rotate by -20
plot rpsfile using 2:xtic(1) title "direct" lc rgb "#4d4d4d", \
     '' using 3 title "twemproxy" lc rgb "#e08214", \
     '' using 4 title "sidepool, 1 worker" lc rgb "#2166ac", \
     '' using 5 title "sidepool, 2 workers" lc rgb "#67a9cf"

# 2. CPU per non-pipelined request, split into the backend's and the proxy's
unset logscale y
set title "CPU per non-pipelined request (median, µs): Redis + proxy"
set style histogram rowstacked
set ylabel "µs per request"
set key outside right top
set yrange [0:*]
set xtics rotate by -20
plot cpufile using 2:xtic(1) title "redis-server" lc rgb "#4d4d4d", \
     '' using 3 title "proxy" lc rgb "#d6604d"

unset multiplot

using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Text;

namespace Ferry.Core.Model;

/// <summary>The ports a resource allows for one protocol: "all", "none", or a list such as "22,8000-8100".</summary>
public sealed class PortSet
{
    private readonly (int From, int To)[] _ranges;

    private PortSet((int From, int To)[] ranges) => _ranges = ranges;

    public static PortSet All { get; } = new([(1, 65535)]);
    public static PortSet None { get; } = new([]);

    public bool IsNone => _ranges.Length == 0;

    /// <summary>The lowest allowed port, or null when the set is "none".</summary>
    public int? Lowest => _ranges.Length == 0 ? null : _ranges[0].From;

    public bool Contains(int port)
    {
        foreach (var (from, to) in _ranges)
        {
            if (port >= from && port <= to)
            {
                return true;
            }
        }
        return false;
    }

    public static bool TryParse(string? text, [NotNullWhen(true)] out PortSet? set, out string error)
    {
        set = null;
        error = "";
        var value = text?.Trim() ?? "";
        if (value.Length == 0 || value.Equals("all", StringComparison.OrdinalIgnoreCase) || value == "*")
        {
            set = All;
            return true;
        }
        if (value.Equals("none", StringComparison.OrdinalIgnoreCase))
        {
            set = None;
            return true;
        }
        var ranges = new List<(int, int)>();
        foreach (var part in value.Split(',', StringSplitOptions.TrimEntries))
        {
            var dash = part.IndexOf('-', StringComparison.Ordinal);
            var fromText = dash < 0 ? part : part[..dash];
            var toText = dash < 0 ? part : part[(dash + 1)..];
            if (!TryPort(fromText, out var from) || !TryPort(toText, out var to))
            {
                error = $"'{part}' in port list '{text}' is not a port or range: use numbers 1-65535 such as '22', '8000-8100', 'all' or 'none'";
                return false;
            }
            if (from > to)
            {
                error = $"port range '{part}' runs backwards: write the lower port first, e.g. '{to}-{from}'";
                return false;
            }
            ranges.Add((from, to));
        }
        ranges.Sort();
        set = new PortSet([.. ranges]);
        return true;
    }

    private static bool TryPort(string text, out int port)
        => int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out port) && port is >= 1 and <= 65535;

    public override string ToString()
    {
        if (_ranges.Length == 0)
        {
            return "none";
        }
        if (_ranges is [(1, 65535)])
        {
            return "all";
        }
        var sb = new StringBuilder();
        foreach (var (from, to) in _ranges)
        {
            if (sb.Length > 0)
            {
                sb.Append(',');
            }
            sb.Append(CultureInfo.InvariantCulture, $"{from}");
            if (to != from)
            {
                sb.Append(CultureInfo.InvariantCulture, $"-{to}");
            }
        }
        return sb.ToString();
    }
}

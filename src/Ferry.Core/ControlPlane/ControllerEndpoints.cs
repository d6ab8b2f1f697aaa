namespace Ferry.Core.ControlPlane;

/// <summary>
/// The controller addresses a daemon or client may use (replicas, or one controller under several names), tried in turn:
/// a session that cannot reach the current one moves on to the next, and stays wherever it last got through.
/// </summary>
public sealed class ControllerEndpoints
{
    private readonly Uri[] _all;
    private int _current;

    public ControllerEndpoints(IReadOnlyList<Uri> urls)
    {
        ArgumentNullException.ThrowIfNull(urls);
        if (urls.Count == 0)
        {
            throw new ArgumentException("at least one controller URL is needed", nameof(urls));
        }
        _all = [.. urls];
    }

    /// <summary>Every address, in the order given.</summary>
    public IReadOnlyList<Uri> All => _all;

    /// <summary>The address to use now.</summary>
    public Uri Current => _all[Volatile.Read(ref _current) % _all.Length];

    /// <summary><paramref name="failed"/> could not be reached: the next address is used from now on (unless another caller moved on already).</summary>
    public void MoveNext(Uri failed)
    {
        var index = Volatile.Read(ref _current);
        if (_all[index % _all.Length] == failed)
        {
            Interlocked.CompareExchange(ref _current, (index + 1) % _all.Length, index);
        }
    }

    /// <summary>Parses "https://a:8443,https://b:8443"; the error names the entry that is wrong and the expected form.</summary>
    public static bool TryParse(string? text, out ControllerEndpoints? endpoints, out string? error)
    {
        endpoints = null;
        var urls = new List<Uri>();
        foreach (var part in (text ?? "").Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            if (!Uri.TryCreate(part, UriKind.Absolute, out var uri) || uri.Scheme is not ("https" or "http") || uri.Host.Length == 0)
            {
                error = $"controller URL '{part}' is not valid: expected https://HOST:PORT (several separated by commas)";
                return false;
            }
            urls.Add(uri);
        }
        if (urls.Count == 0)
        {
            error = "no controller URL given: expected https://HOST:PORT (several separated by commas)";
            return false;
        }
        endpoints = new ControllerEndpoints(urls);
        error = null;
        return true;
    }

    /// <summary>One address, as a list.</summary>
    public static ControllerEndpoints Of(Uri url) => new([url]);

    public override string ToString() => string.Join(",", _all.Select(u => u.ToString().TrimEnd('/')));
}

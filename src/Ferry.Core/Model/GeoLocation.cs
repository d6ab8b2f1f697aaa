using System.Diagnostics.CodeAnalysis;
using System.Globalization;

namespace Ferry.Core.Model;

/// <summary>
/// Where a connector or client is, for geographic routing: a region name ("eu-west") or coordinates ("52.37,4.90").
/// Two coordinates are as far apart as the great circle between them; two regions are at distance zero when they are
/// the same region, and at an unknown distance otherwise (as is a region from coordinates).
/// </summary>
public sealed record GeoLocation
{
    private const double EarthRadiusKm = 6371.0;

    private GeoLocation(string text, string? region, double latitude, double longitude)
    {
        Text = text;
        Region = region;
        Latitude = latitude;
        Longitude = longitude;
    }

    /// <summary>As written by the operator.</summary>
    public string Text { get; }

    /// <summary>The region name, or null for coordinates.</summary>
    public string? Region { get; }

    public double Latitude { get; }

    public double Longitude { get; }

    public override string ToString() => Text;

    /// <summary>Parses "REGION" or "LAT,LON"; the error says what is wrong and what is expected.</summary>
    public static bool TryParse([NotNullWhen(true)] string? text, [NotNullWhen(true)] out GeoLocation? location, [NotNullWhen(false)] out string? error)
    {
        location = null;
        if (string.IsNullOrWhiteSpace(text))
        {
            error = "a location is empty: give a region name (eu-west) or LAT,LON (52.37,4.90)";
            return false;
        }
        text = text.Trim();
        var parts = text.Split(',');
        if (parts.Length == 2)
        {
            if (!double.TryParse(parts[0], NumberStyles.Float, CultureInfo.InvariantCulture, out var lat) || !double.TryParse(parts[1], NumberStyles.Float, CultureInfo.InvariantCulture, out var lon)
                || !double.IsFinite(lat) || !double.IsFinite(lon) || lat is < -90 or > 90 || lon is < -180 or > 180)
            {
                error = $"location '{text}' is not valid: give LAT,LON in decimal degrees with latitude -90..90 and longitude -180..180 (52.37,4.90), or a region name (eu-west)";
                return false;
            }
            location = new GeoLocation(text, null, lat, lon);
            error = null;
            return true;
        }
        if (parts.Length > 2 || !IsRegionName(text))
        {
            error = $"location '{text}' is not valid: give a region name of letters, digits, '.', '_' or '-' (eu-west), or LAT,LON (52.37,4.90)";
            return false;
        }
        location = new GeoLocation(text, text.ToLowerInvariant(), double.NaN, double.NaN);
        error = null;
        return true;
    }

    /// <summary>Parses a location known to be valid (stored by the controller); null for none or for text that does not parse.</summary>
    public static GeoLocation? ParseOrNull(string? text) => TryParse(text, out var location, out _) ? location : null;

    /// <summary>Kilometres to <paramref name="other"/>; null when it cannot be told (different regions, or a region and coordinates).</summary>
    public double? DistanceKmTo(GeoLocation other)
    {
        ArgumentNullException.ThrowIfNull(other);
        if (Region is not null || other.Region is not null)
        {
            return Region is not null && Region == other.Region ? 0 : null;
        }
        // Haversine: exact enough on a sphere for choosing between data centres.
        var dLat = Radians(other.Latitude - Latitude);
        var dLon = Radians(other.Longitude - Longitude);
        var a = (Math.Sin(dLat / 2) * Math.Sin(dLat / 2)) + (Math.Cos(Radians(Latitude)) * Math.Cos(Radians(other.Latitude)) * Math.Sin(dLon / 2) * Math.Sin(dLon / 2));
        return 2 * EarthRadiusKm * Math.Asin(Math.Min(1, Math.Sqrt(a)));
    }

    private static double Radians(double degrees) => degrees * Math.PI / 180;

    private static bool IsRegionName(string text)
        => text.Length is > 0 and <= 63 && char.IsAsciiLetterOrDigit(text[0]) && text.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-');
}

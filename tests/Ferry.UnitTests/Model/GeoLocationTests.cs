using Ferry.Core.Model;

namespace Ferry.UnitTests.Model;

/// <summary>Parsing of locations (regions and coordinates) and the distances between them.</summary>
public sealed class GeoLocationTests
{
    private static GeoLocation Parse(string text)
    {
        Assert.True(GeoLocation.TryParse(text, out var location, out var error), error);
        return location;
    }

    [Fact]
    public void Coordinates_parse_into_latitude_and_longitude()
    {
        var location = Parse("52.37,4.90");
        Assert.Null(location.Region);
        Assert.Equal(52.37, location.Latitude, 6);
        Assert.Equal(4.90, location.Longitude, 6);
        Assert.Equal("52.37,4.90", location.Text);
        Assert.Equal("52.37,4.90", location.ToString());
    }

    [Theory]
    [InlineData("-90,-180", -90, -180)]
    [InlineData("90,180", 90, 180)]
    [InlineData("-33.87,151.21", -33.87, 151.21)]
    [InlineData("0,0", 0, 0)]
    public void Coordinates_at_and_inside_the_limits_parse(string text, double latitude, double longitude)
    {
        var location = Parse(text);
        Assert.Equal(latitude, location.Latitude, 6);
        Assert.Equal(longitude, location.Longitude, 6);
    }

    [Fact]
    public void Coordinates_are_trimmed_around_and_between()
    {
        var location = Parse("  52.37 , 4.90 \t");
        Assert.Equal(52.37, location.Latitude, 6);
        Assert.Equal(4.90, location.Longitude, 6);
        Assert.Equal("52.37 , 4.90", location.Text);
    }

    [Fact]
    public void A_region_name_parses_trimmed_and_lowercased()
    {
        var location = Parse("  EU-West ");
        Assert.Equal("eu-west", location.Region);
        Assert.Equal("EU-West", location.Text);
        Assert.True(double.IsNaN(location.Latitude));
        Assert.True(double.IsNaN(location.Longitude));
    }

    [Fact]
    public void Region_names_compare_without_case()
    {
        var upper = Parse("EU-WEST");
        var lower = Parse("eu-west");
        Assert.Equal(upper.Region, lower.Region);
        Assert.Equal(0, upper.DistanceKmTo(lower));
        Assert.Equal(0, lower.DistanceKmTo(upper));
    }

    [Theory]
    [InlineData("eu-west")]
    [InlineData("us_east.2")]
    [InlineData("9zone")]
    public void Region_names_of_letters_digits_dots_underscores_and_dashes_parse(string text)
        => Assert.Equal(text, Parse(text).Region);

    [Theory]
    [InlineData("")]
    [InlineData("   ")]
    [InlineData(null)]
    public void An_empty_location_is_refused(string? text)
    {
        Assert.False(GeoLocation.TryParse(text, out var location, out var error));
        Assert.Null(location);
        Assert.Contains("empty", error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("91,0")]
    [InlineData("-91,0")]
    [InlineData("0,181")]
    [InlineData("0,-181")]
    [InlineData("a,b")]
    [InlineData("1,")]
    [InlineData("1,2,3")]
    [InlineData("bad region!")]
    [InlineData("-eu")]
    [InlineData("Infinity,0")]
    public void Bad_locations_are_refused_with_an_error_naming_them(string text)
    {
        Assert.False(GeoLocation.TryParse(text, out var location, out var error));
        Assert.Null(location);
        Assert.Contains($"'{text}'", error, StringComparison.Ordinal);
    }

    [Fact]
    public void A_region_name_longer_than_63_characters_is_refused()
    {
        Assert.True(GeoLocation.TryParse(new string('a', 63), out _, out _));
        Assert.False(GeoLocation.TryParse(new string('a', 64), out _, out var error));
        Assert.Contains("region name", error, StringComparison.Ordinal);
    }

    // Fails today: double.TryParse accepts "NaN", and NaN passes the range check (every comparison with NaN is false),
    // so "NaN,0" parses as coordinates whose distances to everything are NaN.
    [Theory]
    [InlineData("NaN,0")]
    [InlineData("0,NaN")]
    [InlineData("NaN,NaN")]
    public void Coordinates_that_are_not_numbers_are_refused(string text)
    {
        Assert.False(GeoLocation.TryParse(text, out var location, out var error), $"'{text}' parsed as {location?.Latitude},{location?.Longitude}");
        Assert.Contains($"'{text}'", error, StringComparison.Ordinal);
    }

    [Fact]
    public void Amsterdam_to_Frankfurt_is_about_364_km()
    {
        var distance = Parse("52.37,4.90").DistanceKmTo(Parse("50.11,8.68"));
        Assert.NotNull(distance);
        Assert.InRange(distance.Value, 354, 374);
    }

    [Fact]
    public void Frankfurt_to_Washington_is_about_6530_km_either_way()
    {
        var frankfurt = Parse("50.11,8.68");
        var washington = Parse("38.90,-77.04");
        var there = frankfurt.DistanceKmTo(washington);
        var back = washington.DistanceKmTo(frankfurt);
        Assert.NotNull(there);
        Assert.InRange(there.Value, 6480, 6580);
        Assert.Equal(there.Value, back!.Value, 6);
    }

    [Fact]
    public void Antipodes_are_half_the_earth_apart()
    {
        var distance = Parse("0,0").DistanceKmTo(Parse("0,180"));
        Assert.NotNull(distance);
        Assert.InRange(distance.Value, 20_000, 20_040);
    }

    [Fact]
    public void The_same_point_is_at_distance_zero()
        => Assert.Equal(0, Parse("52.37,4.90").DistanceKmTo(Parse("52.37,4.90"))!.Value, 9);

    [Fact]
    public void A_region_and_coordinates_are_at_an_unknown_distance()
    {
        Assert.Null(Parse("eu-west").DistanceKmTo(Parse("52.37,4.90")));
        Assert.Null(Parse("52.37,4.90").DistanceKmTo(Parse("eu-west")));
    }

    [Fact]
    public void Different_regions_are_at_an_unknown_distance()
        => Assert.Null(Parse("eu-west").DistanceKmTo(Parse("us-east")));

    [Fact]
    public void The_same_region_is_at_distance_zero()
        => Assert.Equal(0, Parse("eu-west").DistanceKmTo(Parse("eu-west")));

    [Fact]
    public void DistanceKmTo_refuses_null()
        => Assert.Throws<ArgumentNullException>(() => Parse("eu-west").DistanceKmTo(null!));

    [Fact]
    public void ParseOrNull_gives_the_location_or_null()
    {
        Assert.Equal("eu-west", GeoLocation.ParseOrNull("eu-west")?.Region);
        Assert.Equal(52.37, GeoLocation.ParseOrNull("52.37,4.90")!.Latitude, 6);
        Assert.Null(GeoLocation.ParseOrNull(null));
        Assert.Null(GeoLocation.ParseOrNull(""));
        Assert.Null(GeoLocation.ParseOrNull("91,0"));
        Assert.Null(GeoLocation.ParseOrNull("bad region!"));
    }
}

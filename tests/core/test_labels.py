"""Every Stanford Cars make parses whole, however a folder name separates its words."""

from __future__ import annotations

import pytest

from core.labels import STANFORD_CARS_MAKES, make_of, parse_label

# One class of each of Stanford Cars' 49 makes, as its class names spell it.
CLASS_OF_EACH_MAKE = [
    "AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Aston Martin V8 Vantage Convertible 2012",
    "Audi RS 4 Convertible 2008", "BMW ActiveHybrid 5 Sedan 2012", "Bentley Continental GT Coupe 2012",
    "Bugatti Veyron 16.4 Convertible 2009", "Buick Regal GS 2012", "Cadillac CTS-V Sedan 2012",
    "Chevrolet Corvette ZR1 2012", "Chrysler 300 SRT-8 2010", "Daewoo Nubira Wagon 2002",
    "Dodge Ram Pickup 3500 Crew Cab 2010", "Eagle Talon Hatchback 1998", "FIAT 500 Abarth 2012",
    "Ferrari 458 Italia Coupe 2012", "Fisker Karma Sedan 2012", "Ford F-150 Regular Cab 2012",
    "GMC Savana Van 2012", "Geo Metro Convertible 1993", "HUMMER H3T Crew Cab 2010", "Honda Odyssey Minivan 2012",
    "Hyundai Veloster Hatchback 2012", "Infiniti QX56 SUV 2011", "Isuzu Ascender SUV 2008", "Jaguar XK XKR 2012",
    "Jeep Grand Cherokee SUV 2012", "Lamborghini Aventador Coupe 2012", "Land Rover Range Rover SUV 2012",
    "Lincoln Town Car Sedan 2011", "MINI Cooper Roadster Convertible 2012", "Maybach Landaulet Convertible 2012",
    "Mazda Tribute SUV 2011", "McLaren MP4-12C Coupe 2012", "Mercedes-Benz C-Class Sedan 2012",
    "Mitsubishi Lancer Sedan 2012", "Nissan Leaf Hatchback 2012", "Plymouth Neon Coupe 1999",
    "Porsche Panamera Sedan 2012", "Ram C/V Cargo Van Minivan 2012", "Rolls-Royce Phantom Sedan 2012",
    "Scion xD Hatchback 2012", "Spyker C8 Coupe 2009", "Suzuki Kizashi Sedan 2012", "Tesla Model S Sedan 2012",
    "Toyota Camry Sedan 2012", "Volkswagen Golf Hatchback 2012", "Volvo XC90 SUV 2007", "smart fortwo Convertible 2012",
]  # fmt: skip

SPELLINGS = {
    "spaces": lambda name: name,
    "underscores": lambda name: "123_" + name.replace(" ", "_").replace("-", "_").replace("/", "_"),
    "hyphens": lambda name: name.replace(" ", "-").replace("/", "-"),
}


def test_the_list_names_each_of_the_49_makes_once():
    assert len(STANFORD_CARS_MAKES) == len(set(STANFORD_CARS_MAKES)) == 49
    assert [parse_label(name)["make"] for name in CLASS_OF_EACH_MAKE] == list(STANFORD_CARS_MAKES)


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("name", CLASS_OF_EACH_MAKE)
def test_every_make_parses_whole_from_any_folder_spelling(name, spelling):
    make = STANFORD_CARS_MAKES[CLASS_OF_EACH_MAKE.index(name)]
    parsed = parse_label(SPELLINGS[spelling](name))
    assert parsed["make"] == make and parsed["year"] == int(name[-4:])
    assert parsed["model"].replace("-", " ").replace("/", " ").split() == (
        name[len(make) : -4].replace("-", " ").replace("/", " ").split()
    )


@pytest.mark.parametrize(
    "label, expected",
    [
        ("Rolls_Royce_Phantom_Sedan_2012", {"make": "Rolls-Royce", "model": "Phantom Sedan", "year": 2012}),
        ("Mercedes_Benz_C_Class_Sedan_2012", {"make": "Mercedes-Benz", "model": "C Class Sedan", "year": 2012}),
        ("McLaren MP4-12C Coupe 2012", {"make": "McLaren", "model": "MP4-12C Coupe", "year": 2012}),
        ("Land-Rover-LR2-SUV-2012", {"make": "Land Rover", "model": "LR2 SUV", "year": 2012}),
        ("ROLLS ROYCE Ghost Sedan 2012", {"make": "Rolls-Royce", "model": "Ghost Sedan", "year": 2012}),
        ("Smart_fortwo_Convertible_2012", {"make": "smart", "model": "fortwo Convertible", "year": 2012}),
        ("Lada Niva SUV 1990", {"make": "Lada", "model": "Niva SUV", "year": 1990}),  # not in Stanford Cars
        ("Geometry Box 2012", {"make": "Geometry", "model": "Box", "year": 2012}),  # "Geo" is a whole word only
    ],
)  # fmt: skip
def test_labels_parse_into_make_model_and_year(label, expected):
    assert parse_label(label) == expected


@pytest.mark.parametrize("label", ["synthetic_blue_circle", "", "Audi 2012", "Audi TT Coupe", "Audi TT 1850"])
def test_a_label_without_make_model_and_year_names_its_own_group(label):
    assert parse_label(label) == {} and make_of(label) == label
